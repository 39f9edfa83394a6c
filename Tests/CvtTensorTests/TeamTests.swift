import CDNNL
import CKernels
import CvtTensor
import Foundation
import Synchronization
import XCTest

/// The kernels' thread team (`ck_parallel`, team.c): every member runs once, nested and
/// concurrent regions run on their caller alone, and both waiting paths (spinning and sleeping)
/// hand work over, on our pool and on OpenMP's.
// Regions run from other threads call this class's helpers, which keep no state.
final class TeamTests: XCTestCase, @unchecked Sendable {
    /// What one region's members saw.
    final class Record {
        let lock = NSLock()
        var calls: [(member: Int, members: Int)] = []
        var nested: [(member: Int, members: Int)] = []
        var nestedThreads: [Int] = []
        var sleepMicroseconds: UInt32 = 0
        var nest = false
    }

    static let member: ck_team_fn = { raw, member, members in
        guard let raw else { return }
        let r = Unmanaged<Record>.fromOpaque(raw).takeUnretainedValue()
        if r.sleepMicroseconds > 0, member == members - 1 { usleep(r.sleepMicroseconds) }
        r.lock.lock(); r.calls.append((Int(member), Int(members))); r.lock.unlock()
        if r.nest {
            let inner = Record()
            ck_parallel(TeamTests.member, Unmanaged.passUnretained(inner).toOpaque(), 4)
            r.lock.lock()
            r.nested += inner.calls; r.nestedThreads.append(Int(ck_team_threads()))
            r.lock.unlock()
        }
    }

    /// Runs one region of `members` and returns what its members saw.
    func region(_ members: Int, configure: (Record) -> Void = { _ in }) -> Record {
        let r = Record()
        configure(r)
        ck_parallel(TeamTests.member, Unmanaged.passUnretained(r).toOpaque(), Int32(members))
        return r
    }

    func assertEveryMemberOnce(_ r: Record, _ members: Int, _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        let ids = r.calls.map(\.member).sorted()
        XCTAssertEqual(ids, Array(0..<members), "\(name): members \(ids)", file: file, line: line)
        XCTAssertTrue(r.calls.allSatisfy { $0.members == members }, "\(name): counts \(r.calls.map(\.members))", file: file, line: line)
    }

    /// Sets both teams' thread counts (ours for the process, OpenMP's for this thread).
    func setThreads(_ n: Int) throws {
        ck_team_set_threads(Int32(n))
        omp_set_num_threads(Int32(n))
    }

    override func tearDownWithError() throws {
        ck_team_set_openmp(-1)
        ck_team_set_spin_us(-1)
        try setThreads(ProcessInfo.processInfo.activeProcessorCount)
    }

    func runModes(_ body: (String) throws -> Void) rethrows {
        for (mode, openmp) in [("own pool", Int32(0)), ("OpenMP", 1)] {
            ck_team_set_openmp(openmp)
            XCTAssertEqual(ck_team_uses_openmp(), openmp)
            try body(mode)
        }
    }

    func testEveryMemberRunsOnceUpToTheThreadCount() throws {
        try runModes { mode in
            try setThreads(4)
            for members in 1...4 { assertEveryMemberOnce(region(members), members, "\(mode), \(members) members") }
            // Capped at the team's threads.
            try setThreads(3)
            assertEveryMemberOnce(region(8), 3, "\(mode), 8 asked of 3 threads")
            XCTAssertEqual(ck_team_threads(), 3)
        }
    }

    func testNestedRegionsRunOnTheirCallerAlone() throws {
        try runModes { mode in
            try setThreads(3)
            XCTAssertEqual(ck_team_in_region(), 0)
            let r = region(3) { $0.nest = true }
            assertEveryMemberOnce(r, 3, "\(mode) outer")
            XCTAssertEqual(r.nested.count, 3, "\(mode): one inner call per outer member")
            XCTAssertTrue(r.nested.allSatisfy { $0.member == 0 && $0.members == 1 }, "\(mode): inner \(r.nested)")
            XCTAssertEqual(r.nestedThreads, [1, 1, 1], "\(mode): threads seen inside a region")
            XCTAssertEqual(ck_team_in_region(), 0)
        }
    }

    /// Runs `body` on another thread and fails, instead of hanging, if it has not returned in
    /// `seconds` (a lost wake-up leaves a region waiting forever).
    func withinDeadline(_ seconds: Double, _ name: String, _ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread { body(); done.signal() }.start()
        if done.wait(timeout: .now() + seconds) == .timedOut { XCTFail("\(name): still running after \(seconds) s") }
    }

    /// Many regions in a row, with the spinning hand-over and with the sleeping one (no spin: every
    /// wait goes to the futex; a slow last member makes the caller sleep too).
    func testBackToBackRegionsWithSpinningAndSleepingWaits() {
        ck_team_set_openmp(0)
        ck_team_set_threads(2)
        for spin in [-1, 0] {
            ck_team_set_spin_us(spin)
            let failures = Failures()
            withinDeadline(30, "spin \(spin)") {
                for i in 0..<2000 {
                    let r = self.region(2) { $0.sleepMicroseconds = i % 100 == 0 ? 3000 : 0 }
                    if r.calls.map(\.member).sorted() != [0, 1] || !r.calls.allSatisfy({ $0.members == 2 }) {
                        failures.add("region \(i): \(r.calls)")
                    }
                }
                // Long enough for the pool threads to fall asleep, then one more region.
                usleep(20_000)
                let r = self.region(2)
                if r.calls.map(\.member).sorted() != [0, 1] { failures.add("after a pause: \(r.calls)") }
            }
            XCTAssertEqual(failures.all.prefix(3), [], "spin \(spin)")
        }
    }

    final class Failures: @unchecked Sendable {
        private let lock = NSLock()
        private var list: [String] = []
        func add(_ s: String) { lock.lock(); list.append(s); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return list }
    }

    /// A forked child has none of the parent's pool threads: its regions start their own instead
    /// of waiting forever for the parent's.
    func testForkedChildRunsRegions() {
        ck_team_set_openmp(0)
        ck_team_set_threads(2)
        assertEveryMemberOnce(region(2), 2, "parent, before the fork")  // the pool is running
        let pid = fork()
        if pid == 0 {
            alarm(10)  // a hang ends the child with SIGALRM
            let r = region(2)
            let ok = r.calls.map(\.member).sorted() == [0, 1] && r.calls.allSatisfy { $0.members == 2 }
            _exit(ok ? 0 : 1)
        }
        XCTAssertGreaterThan(pid, 0, "fork failed")
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let signal = status & 0x7f, code = (status >> 8) & 0xff
        XCTAssertEqual(signal, 0, "child killed by signal \(signal) (SIGALRM \(SIGALRM): its region hung)")
        XCTAssertEqual(code, 0, "child's region did not run both members")
        assertEveryMemberOnce(region(2), 2, "parent, after the fork")
    }

    /// Regions started from several threads at once: one runs on the team, the others on their
    /// callers alone; every region still runs all of its work.
    func testConcurrentCallersEachRunTheirWholeRegion() {
        ck_team_set_openmp(0)
        ck_team_set_threads(2)
        let results = Mutex([Int](repeating: 0, count: 8))
        DispatchQueue.concurrentPerform(iterations: 8) { caller in
            var complete = 0
            for _ in 0..<300 {
                let r = region(2)
                let ids = Set(r.calls.map(\.member)), members = r.calls.first?.members ?? 0
                if r.calls.count == members, ids == Set(0..<members) { complete += 1 }
            }
            results.withLock { $0[caller] = complete }
        }
        XCTAssertEqual(results.withLock { $0 }, Array(repeating: 300, count: 8))
    }
}
