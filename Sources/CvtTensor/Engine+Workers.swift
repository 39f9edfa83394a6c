import CDNNL
import CKernels
import Foundation

// Batches split across the threads: each part of a batch runs on one thread with an engine of its
// own (`concurrently`), instead of every operation running on all threads.
extension Engine {
    /// Whether a model splits a batch of several images across the threads (parts of up to
    /// `imagesPerPart` images), each part running on one thread with its own engine, instead of
    /// running every operation on all threads. On by default: per-image work is independent, and
    /// one thread per part keeps each core on its own data and skips the thread hand-offs of every
    /// backend call.
    public var splitsBatches: Bool {
        get { setting(\.splitsBatches) }
        set { set(\.splitsBatches, newValue) }
    }

    /// Images per part at most when a batch is split: a worker runs its images in parts of this
    /// size, one after the other, so that a part's activations stay in cache (a 16-image part's
    /// [3152, 1536] MLP output does not). 0: one part per thread, however large. With our AVX2
    /// kernels 2 (smaller parts leave a shorter tail at the end of a batch, and less memory); 4
    /// where oneDNN runs the matmuls (its kernels gain more from taller matrices).
    public var imagesPerPart: Int {
        get { setting(\.imagesPerPart) }
        set { set(\.imagesPerPart, max(0, newValue)) }
    }

    /// How many parts a batch of `batchSize` images is split into (1: not split).
    public func batchParts(_ batchSize: Int) -> Int {
        guard splitsBatches else { return 1 }
        let perThread = max(1, min(batchSize, threads))
        return imagesPerPart > 0 ? max(perThread, (batchSize + imagesPerPart - 1) / imagesPerPart) : perThread
    }

    /// Runs `body(i, worker)` for `i` in `0..<count` on a team of `min(count, threads)` threads:
    /// each member takes the next free part when done with one and runs it on its thread alone, with
    /// its own engine, which has this engine's settings; rethrows the first error. Profile times of
    /// the workers are added to this engine's (CPU time, so they may exceed wall time).
    public func concurrently(_ count: Int, _ body: (Int, Engine) throws -> Void) throws {
        if count <= 0 { return }
        try exclusively { try runConcurrently(count, body) }
    }

    private func runConcurrently(_ count: Int, _ body: (Int, Engine) throws -> Void) throws {
        let members = min(count, max(1, settings.threads))
        while workers.count < members { workers.append(try Engine(worker: true)) }
        let team = Array(workers.prefix(members))
        for w in team {
            var copied = settings
            copied.threads = 1
            w.callLock.withLock { w.settings = copied }
        }
        // The team is the kernels' team (ck_parallel): its threads wait for the next region
        // anyway. Inside a member the kernels run on that thread alone (the team grants one thread
        // inside a region), and so does oneDNN (OpenMP's count is per thread, restored after).
        let errors = withoutActuallyEscaping(body) { body -> [Error?] in
            let job = TeamJob(count: count) { i, member in
                let outer = omp_get_max_threads()
                omp_set_num_threads(1)
                defer { omp_set_num_threads(outer) }
                try body(i, team[min(member, members - 1)])
            }
            ck_parallel({ raw, member, _ in
                guard let raw else { return }
                Unmanaged<TeamJob>.fromOpaque(raw).takeUnretainedValue().runMember(Int(member))
            }, Unmanaged.passUnretained(job).toOpaque(), Int32(members))
            job.body = nil  // `body` must not outlive this call
            return job.errors
        }
        for w in team {
            for (op, names) in w.backendImplementations { for n in names { noteImplementation(op, n) } }
        }
        if settings.profile {
            for w in team {
                for (k, v) in w.profileTimes { _profileTimes[k, default: 0] += v }
                for (k, v) in w.profileDetail { _profileDetail[k, default: 0] += v }
                w.profileTimes = [:]; w.profileDetail = [:]
            }
        }
        if let e = errors.lazy.compactMap({ $0 }).first { throw e }
    }
}
