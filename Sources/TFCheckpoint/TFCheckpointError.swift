import CheckpointSupport

/// Every failure of `TFCheckpoint`: the file it concerns and what is wrong, in words that name the
/// offending HDF5 dataset, weight name or HDF5 error.
public typealias TFCheckpointError = CheckpointFileError
