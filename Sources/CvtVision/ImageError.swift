import Foundation

/// An image that could not be read or decoded. `file` names the file (or the name given to
/// `ImageDecoder.decode(data:name:)`), `message` says what is wrong with it.
public struct ImageError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The category of failure.
    public enum Kind: String, Sendable {
        /// There is no file at the path.
        case fileNotFound
        /// The file exists but could not be read (a directory, no permission, an I/O error).
        case unreadable
        /// The file or data is empty (0 bytes).
        case emptyFile
        /// A recognised image format other than JPEG or PNG.
        case unsupportedFormat
        /// The bytes are not an image (no known signature).
        case notAnImage
        /// The data ends before the image is complete.
        case truncated
        /// The codec reported damaged data.
        case corrupt
        /// The image has zero width or height.
        case zeroSized
        /// width × height exceeds the decompression-bomb limit.
        case tooManyPixels
        /// Memory for the pixels could not be allocated.
        case outOfMemory
    }

    /// The category of failure.
    public let kind: Kind
    /// The path, or the name given to `ImageDecoder.decode(data:name:)`.
    public let file: String
    /// What is wrong with the file or data.
    public let message: String

    /// Creates an error of `kind` about `file`.
    public init(kind: Kind, file: String, message: String) {
        self.kind = kind
        self.file = file
        self.message = message
    }

    /// `"<file>: <message>"`.
    public var description: String { "\(file): \(message)" }
}

/// A preprocessing request that cannot be carried out: an invalid or unsupported
/// `preprocessor_config.json`, or a batch whose images end up with different sizes.
public struct PreprocessingError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What cannot be done and why, naming the offending key or image.
    public let message: String
    /// Creates an error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}
