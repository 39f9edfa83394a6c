import Foundation

/// Where the Trainer's batches come from: the items at `indices` as one batch, prepared for
/// `epoch` (augmentation may differ per epoch). Called from a loader thread.
public protocol TrainingBatchSource: AnyObject, Sendable {
    var count: Int { get }
    func batch(_ indices: [Int], epoch: Int) throws -> (Tensor, Labels)
    /// Checks, before any step, that the data fit the model's head and input.
    func validate(for config: CvtConfig) throws
}

/// Preprocessed tensors are used as they are, whatever the epoch.
public final class TensorBatchSource: TrainingBatchSource {
    /// The preprocessed pixel values and labels.
    public let tensors: TrainingTensors
    /// How errors name the data (e.g. the file's path).
    public let name: String
    /// A source over `tensors`; `name` appears in validation errors.
    public init(_ tensors: TrainingTensors, name: String = "training data") { self.tensors = tensors; self.name = name }
    /// Number of items (`pixelValues.shape[0]`).
    public var count: Int { tensors.count }
    /// The items at `indices` as pixel values `[B, C, H, W]` and labels; `epoch` is ignored.
    public func batch(_ indices: [Int], epoch: Int) throws -> (Tensor, Labels) { try tensors.batch(indices) }
    /// Checks that the tensors' channels, labels and targets fit `config`.
    /// - Throws: an error naming `name` when they do not.
    public func validate(for config: CvtConfig) throws { try tensors.validate(for: config, source: name) }
}

/// Decoded images, augmented (training) or only preprocessed (evaluation, `.none`), then rescaled
/// and normalized with the processor's mean and std.
public final class ImageBatchSource: TrainingBatchSource {
    /// The decoded, labelled images.
    public let dataset: LabeledImageDataset
    /// The processor whose resize, rescale and normalization are applied (resizing may be replaced by the augmentation).
    public let processor: ConvNextImageProcessor
    /// The augmentation applied to each training image.
    public let augmentation: Augmentation
    /// Seeds each image's augmentation per epoch (`augmentationGenerator(seed:epoch:index:)`).
    public let seed: UInt64
    let width: Int, height: Int

    /// A source decoding `dataset`'s images, augmenting them with `augmentation` and normalizing them with `processor`.
    /// - Throws: `TrainingError.invalidArguments` when the processor does not give every image the same size.
    public init(dataset: LabeledImageDataset, processor: ConvNextImageProcessor, augmentation: Augmentation, seed: UInt64) throws {
        guard let size = processor.outputSize else {
            throw TrainingError.invalidArguments("the image processor keeps every image's size (do_resize and do_center_crop off); training needs one input size")
        }
        self.dataset = dataset; self.processor = processor; self.augmentation = augmentation; self.seed = seed
        width = size.width; height = size.height
    }

    /// Number of images.
    public var count: Int { dataset.count }

    /// The images at `indices`, augmented for `epoch` and normalized, as pixel values `[B, 3, H, W]` and class indices.
    /// - Throws: `DatasetError` naming the image that could not be decoded or augmented.
    public func batch(_ indices: [Int], epoch: Int) throws -> (Tensor, Labels) {
        let images = try indices.map { i -> RGBImage in
            var rng = augmentationGenerator(seed: seed, epoch: epoch, index: i)
            do {
                return try augmentation.apply(dataset.image(at: i), processor: processor, width: width, height: height, using: &rng)
            } catch {
                throw DatasetError(path: dataset.itemName(i), "\(error)")
            }
        }
        return (try processor.normalized(images), .classIndices(indices.map { dataset.label(at: $0) }))
    }

    /// Checks that the model takes RGB input and has one output per label of the data set.
    /// - Throws: `TrainingError.invalidArguments` when it does not.
    public func validate(for config: CvtConfig) throws {
        guard config.numChannels == 3 else {
            throw TrainingError.invalidArguments("images are RGB, but the model expects num_channels = \(config.numChannels)")
        }
        guard config.numLabels == dataset.labelNames.count else {
            throw TrainingError.invalidArguments("the data have \(dataset.labelNames.count) labels but the model's head has num_labels = \(config.numLabels)")
        }
    }
}

/// Prepares items `0..<count` in order on a thread of its own, up to `depth` ahead of the
/// consumer, so decoding and augmentation overlap the training step on the other cores.
/// Its state is guarded by `condition`, so it may be shared with the loader thread.
final class Prefetcher<T: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [Int: Result<T, Error>] = [:]
    private var produced = 0
    private var consumed = 0
    private var cancelled = false
    private let count: Int
    private let depth: Int
    /// Seconds `next()` spent waiting for an item that was not ready.
    private(set) var waitSeconds = 0.0

    init(count: Int, depth: Int = 2, make: @escaping @Sendable (Int) throws -> T) {
        self.count = count
        self.depth = max(depth, 1)
        let thread = Thread { [self] in
            while true {
                condition.lock()
                while !cancelled && produced < count && produced - consumed >= self.depth { condition.wait() }
                if cancelled || produced >= count { condition.unlock(); return }
                let i = produced
                condition.unlock()
                let r = Result { try make(i) }
                condition.lock()
                ready[i] = r
                produced += 1
                condition.broadcast()
                condition.unlock()
            }
        }
        thread.name = "cvt-data-loader"
        thread.start()
    }

    /// The next item in order (rethrows what preparing it threw).
    func next() throws -> T {
        condition.lock()
        defer { condition.unlock() }
        precondition(consumed < count, "Prefetcher read past its end")
        let start = DispatchTime.now().uptimeNanoseconds
        var waited = false
        while ready[consumed] == nil { waited = true; condition.wait() }
        if waited { waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let r = ready.removeValue(forKey: consumed)!
        consumed += 1
        condition.broadcast()
        return try r.get()
    }

    /// Stops the loader thread after the item it is preparing.
    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
    }

    deinit { cancel() }
}
