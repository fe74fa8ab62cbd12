import Foundation
import Synchronization

/// `count` threads that run one body together, each with its index, and meet at `barrier()` inside it (the threads
/// of a window share each step's products: Model.runColumns). The calling thread is index 0; the others are the
/// team's own threads, never a pool's: a pool need not run every iteration at once, and a barrier would then wait
/// forever. A barrier spins briefly and then yields, so a team larger than the machine's cores still finishes.
public final class ThreadTeam: @unchecked Sendable {
    public let count: Int
    private let shared: Shared

    /// What the team's threads hold (not the team, so that its deinit can stop them).
    private final class Shared: @unchecked Sendable {
        let count: Int
        let arrived = Atomic<Int>(0), generation = Atomic<Int>(0)
        let start: [DispatchSemaphore]
        let done = DispatchSemaphore(value: 0)
        /// Written by `run` before it signals `start`, read by the threads after they wait on it.
        var body: ((Int) -> Void)?
        var stopping = false

        init(count: Int) {
            self.count = count
            start = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        }

        func barrier() {
            guard count > 1 else { return }
            let g = generation.load(ordering: .acquiring)
            if arrived.add(1, ordering: .acquiringAndReleasing).newValue == count {
                arrived.store(0, ordering: .relaxed)
                generation.add(1, ordering: .releasing)
                return
            }
            var spins = 0
            while generation.load(ordering: .acquiring) == g {
                spins += 1
                if spins > 20_000 { sched_yield() }
            }
        }
    }

    public init(count: Int) {
        self.count = max(1, count)
        shared = Shared(count: self.count)
        for i in 1..<self.count {
            let s = shared
            let thread = Thread {
                while true {
                    s.start[i].wait()
                    if s.stopping { return }
                    s.body?(i)
                    s.done.signal()
                }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    deinit {
        shared.stopping = true
        for i in 1..<count { shared.start[i].signal() }
    }

    /// Runs `body(0..<count)` at once, index 0 on the calling thread; returns when every index has.
    public func run(_ body: @escaping (Int) -> Void) {
        shared.body = body
        for i in 1..<count { shared.start[i].signal() }
        body(0)
        for _ in 1..<count { shared.done.wait() }
        shared.body = nil
    }

    /// Waits until every index of the running body has reached it.
    public func barrier() { shared.barrier() }
}

extension ThreadTeam {
    /// Teams kept for `parallel`, by size, and which of them are running a caller's body.
    private static let kept = Mutex<(teams: [Int: ThreadTeam], busy: Set<Int>)>(([:], []))

    /// Runs `body(0..<count)` at once on a team of dedicated threads kept for the purpose (one per size, made on
    /// first use), index 0 on the calling thread; when that team is running another caller's body, on the calling
    /// thread, one index after another (so `body` must not wait at a barrier). For work between a window's (an
    /// update, a reduction): a pool need not wake its threads in time for work this short, and threads of its own
    /// sleep between calls.
    public static func parallel(_ count: Int, _ body: (Int) -> Void) {
        guard count > 1 else { if count == 1 { body(0) }; return }
        let team: ThreadTeam? = kept.withLock { k in
            guard !k.busy.contains(count) else { return nil }
            k.busy.insert(count)
            if let t = k.teams[count] { return t }
            let t = ThreadTeam(count: count)
            k.teams[count] = t
            return t
        }
        guard let team else {
            for i in 0..<count { body(i) }
            return
        }
        defer { _ = kept.withLock { $0.busy.remove(count) } }
        withoutActuallyEscaping(body) { team.run($0) }
    }

    /// `body(part)` for each of `parts` fixed parts, on up to `threads` threads (`parallel`): what the parts compute
    /// does not depend on the thread count.
    public static func parallel(parts: Int, threads: Int, _ body: (Int) -> Void) {
        let t = max(1, min(threads, parts))
        parallel(t) { i in
            for part in stride(from: i, to: parts, by: t) { body(part) }
        }
    }
}
