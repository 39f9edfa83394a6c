import CheckpointSupport

/// Every failure of `TorchCheckpoint`: the file it concerns and what is wrong, in words that name
/// the offending zip entry, pickle opcode, pickle global or tensor key.
public typealias TorchCheckpointError = CheckpointFileError
