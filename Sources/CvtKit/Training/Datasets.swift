import Foundation
import Synchronization

/// Labelled images fetched by index: what training and evaluation read.
public protocol LabeledImageDataset: Sendable {
    var count: Int { get }
    /// Class names by class index.
    var labelNames: [String] { get }
    func label(at index: Int) -> Int
    /// Decodes item `index` (throws `ImageError` for a file that is not a usable image).
    func image(at index: Int) throws -> RGBImage
    /// Where item `index` comes from, for messages: a file path, or "FILE image 17".
    func itemName(_ index: Int) -> String
}

/// transformers' `imagefolder` layout for training: one subfolder per label, labels sorted by
/// name (code points, as Python's `sorted`). Images are found by content, not extension (JPEG and
/// PNG); files in nested folders count for the label folder they are in. Hidden files are ignored.
public struct ImageFolderTrainingDataset: LabeledImageDataset {
    /// The folder holding the label subfolders.
    public let root: URL
    /// Class names by class index: the label folder names, sorted (or the training set's, for a validation folder).
    public let labelNames: [String]
    /// Every image file, label folders in `labelNames` order and files sorted by path within each.
    public private(set) var files: [URL]
    /// The class index of each file in `files`.
    public private(set) var labels: [Int]
    /// Number of images.
    public var count: Int { files.count }

    /// The label folders of `url`, sorted as `imagefolder` sorts label names.
    public static func labelFolders(_ url: URL) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue else {
            throw DatasetError(path: url.path, "is not a folder (expected one subfolder of images per label)")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: url.path)
            .filter { !$0.hasPrefix(".") }
            .filter { var d: ObjCBool = false; return FileManager.default.fileExists(atPath: url.appendingPathComponent($0).path, isDirectory: &d) && d.boolValue }
        return names.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
    }

    /// A training folder: its subfolders define the labels. Fewer than two labels, or a label
    /// folder without files, is an error naming the folder.
    public init(url: URL) throws {
        let names = try Self.labelFolders(url)
        guard !names.isEmpty else { throw DatasetError(path: url.path, "has no label subfolders (expected DIR/<label>/<image>)") }
        guard names.count >= 2 else {
            throw DatasetError(path: url.path, "has a single label folder (\"\(names[0])\"): a classifier needs at least two classes")
        }
        try self.init(url: url, labelNames: names, folders: names)
    }

    /// A validation folder read against the training labels: every subfolder must be one of them
    /// (a missing one is fine: that class is just not evaluated).
    public init(url: URL, labelNames: [String]) throws {
        let names = try Self.labelFolders(url)
        guard !names.isEmpty else { throw DatasetError(path: url.path, "has no label subfolders (expected DIR/<label>/<image>)") }
        for n in names where !labelNames.contains(n) {
            throw DatasetError(path: url.appendingPathComponent(n).path, "is not one of the training labels (\(labelNames.prefix(12).map { "\"\($0)\"" }.joined(separator: ", "))\(labelNames.count > 12 ? ", …" : ""))")
        }
        try self.init(url: url, labelNames: labelNames, folders: names)
    }

    init(url: URL, labelNames: [String], folders: [String]) throws {
        root = url
        self.labelNames = labelNames
        var files: [URL] = [], labels: [Int] = []
        for name in folders {
            let folder = url.appendingPathComponent(name)
            var found: [URL] = []
            let e = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: [.isRegularFileKey], options: [.skipsHiddenFiles])
            while let f = e?.nextObject() as? URL {
                guard (try? f.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true else { continue }
                if f.lastPathComponent == "Thumbs.db" { continue }
                found.append(f)
            }
            guard !found.isEmpty else { throw DatasetError(path: folder.path, "is an empty label folder: add images or remove it") }
            found.sort { $0.path.unicodeScalars.lexicographicallyPrecedes($1.path.unicodeScalars) }
            let label = labelNames.firstIndex(of: name)!
            files += found
            labels += Array(repeating: label, count: found.count)
        }
        self.files = files
        self.labels = labels
    }

    /// The class index of item `index`.
    public func label(at index: Int) -> Int { labels[index] }
    /// Decodes item `index` as transformers' `load_image` does.
    /// - Throws: `ImageError` when the file is not a usable JPEG or PNG.
    public func image(at index: Int) throws -> RGBImage { try ImageDecoder.load(contentsOf: files[index]) }
    /// The file's path.
    public func itemName(_ index: Int) -> String { files[index].path }

    /// Drops the items at `indices` (e.g. images that failed the check).
    public mutating func remove(_ indices: Set<Int>) {
        let keep = (0..<files.count).filter { !indices.contains($0) }
        files = keep.map { files[$0] }
        labels = keep.map { labels[$0] }
    }
}

/// A Fashion-MNIST style IDX pair as a training set; IDX has no class names, so they are given
/// (or "0", "1", …).
public struct IDXTrainingDataset: LabeledImageDataset {
    /// The images and labels.
    public let data: IDXDataset
    /// Class names by class index.
    public let labelNames: [String]
    /// The path given to `init`, for messages.
    public let path: String
    /// Number of images.
    public var count: Int { data.count }

    /// Whether `url` is a folder holding `<split>-images-idx3-ubyte[.gz]` files.
    public static func isIDXFolder(_ url: URL) -> Bool {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []
        return names.contains { $0.hasSuffix("-images-idx3-ubyte") || $0.hasSuffix("-images-idx3-ubyte.gz") }
    }

    /// `labelNames` name the classes; without them, `fallbackNames(classCount)` may, else "0", "1", ….
    public init(url: URL, split: String, labelNames: [String]?, fallbackNames: ((Int) -> [String]?)? = nil) throws {
        data = try IDXDataset(url: url, split: split)
        path = url.path
        let classes = (data.labels.max() ?? 0) + 1
        if let names = labelNames ?? fallbackNames?(classes) {
            guard classes <= names.count else {
                throw DatasetError(path: url.path, "has label \(classes - 1), but only \(names.count) label names are known")
            }
            self.labelNames = names
        } else {
            self.labelNames = (0..<classes).map(String.init)
        }
        guard Set(data.labels).count >= 2 else {
            throw DatasetError(path: url.path, "holds a single class: a classifier needs at least two")
        }
    }

    /// The class index of item `index`.
    public func label(at index: Int) -> Int { data.labels[index] }
    /// Image `index`, its gray values copied to R, G and B.
    public func image(at index: Int) throws -> RGBImage { data.image(index) }
    /// `"<path> (<N> images) image <index>"`.
    public func itemName(_ index: Int) -> String { "\(path) (\(data.count) images) image \(index)" }
}

/// The items of `base` at `indices`, in that order.
public struct DatasetSubset: LabeledImageDataset {
    /// The underlying data set.
    public let base: LabeledImageDataset
    /// The indices into `base` that make up this subset, in order.
    public let indices: [Int]
    /// The items of `base` at `indices`.
    public init(_ base: LabeledImageDataset, indices: [Int]) { self.base = base; self.indices = indices }
    /// Number of items (`indices.count`).
    public var count: Int { indices.count }
    /// The base's class names.
    public var labelNames: [String] { base.labelNames }
    /// The class index of the subset's item `index` (`base`'s item `indices[index]`).
    public func label(at index: Int) -> Int { base.label(at: indices[index]) }
    /// Decodes the subset's item `index`.
    public func image(at index: Int) throws -> RGBImage { try base.image(at: indices[index]) }
    /// The base's name for the underlying item.
    public func itemName(_ index: Int) -> String { base.itemName(indices[index]) }
}

/// Seeded, reproducible index splits of a data set.
public enum DatasetSplit {
    /// `Dataset.train_test_split(test_size=fraction)`'s sizes (test = ceil(fraction · n)) with our
    /// seeded permutation: (train indices, held-out indices), each in ascending order.
    public static func trainValidation(count: Int, fraction: Double, seed: UInt64) throws -> (train: [Int], validation: [Int]) {
        guard fraction > 0 && fraction < 1 else { throw TrainingError.invalidArguments("--train-val-split must be in (0, 1), got \(fraction)") }
        let nTest = Int((fraction * Double(count)).rounded(.up))
        guard nTest >= 1, count - nTest >= 1 else {
            throw TrainingError.invalidArguments("--train-val-split \(fraction) of \(count) images leaves no image on one side")
        }
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed ^ 0x5EED_5B17)
        order.shuffle(using: &rng)
        return (Array(order[nTest...]).sorted(), Array(order[..<nTest]).sorted())
    }

    /// The first `n` items of a seeded shuffle (the example's `--max_train_samples`).
    public static func sample(count: Int, n: Int, seed: UInt64) -> [Int] {
        guard n < count else { return Array(0..<count) }
        var order = Array(0..<count)
        var rng = SplitMix64(seed: seed ^ 0x5A3B_1E00)
        order.shuffle(using: &rng)
        return Array(order[..<n]).sorted()
    }
}

/// One image that cannot be used, with the reason.
public struct BadImage: CustomStringConvertible, Sendable {
    /// The item's index in its data set.
    public let index: Int
    /// Where it comes from (`itemName`), e.g. its path.
    public let name: String
    /// Why it cannot be used (the decoding error).
    public let reason: String
    /// `"<name>: <reason>"`.
    public var description: String { "\(name): \(reason)" }
}

extension LabeledImageDataset {
    /// Decodes every image (on all cores) and returns those that fail, in index order, so a bad
    /// file is found before the first step rather than hours into a run.
    public func findBadImages(progress: (@Sendable (Int, Int) -> Void)? = nil) -> [BadImage] {
        let n = count
        let chunk = 64
        let chunks = (n + chunk - 1) / chunk
        let found = Mutex<(bad: [BadImage], done: Int)>(([], 0))
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            var local: [BadImage] = []
            for i in (c * chunk)..<min(n, c * chunk + chunk) {
                do {
                    let img = try image(at: i)
                    if img.width < 1 || img.height < 1 { local.append(BadImage(index: i, name: itemName(i), reason: "has no pixels")) }
                } catch {
                    local.append(BadImage(index: i, name: itemName(i), reason: "\(error)"))
                }
            }
            let d = found.withLock {
                $0.bad += local
                $0.done += min(n, c * chunk + chunk) - c * chunk
                return $0.done
            }
            progress?(d, n)
        }
        let bad = found.withLock { $0.bad }
        return bad.sorted { $0.index < $1.index }
    }
}
