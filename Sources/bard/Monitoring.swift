import ArgumentParser
import BardModel
import BardMonitor
import BardPlot
import BardTraining
import Foundation

/// `--metrics` and the reference overlay, shared by `bard train` and `bard coordinator`.
struct MonitorFlags: ParsableArguments {
    @Option(help: "Serve Prometheus metrics at /metrics and a live dashboard at / on HOST:PORT (e.g. 127.0.0.1:9464 for this host only; :PORT or 0.0.0.0:PORT for all interfaces).")
    var metrics: String?
    @Option(help: "Overlay these reference validation curves (JSON lines with cfg, epoch, val) on the dashboard's chart.")
    var reference: String?
    @Option(name: .customLong("reference-config"), help: "Only this reference configuration (repeatable).")
    var referenceConfig: [String] = []

    /// Starts the server and hooks it to the trainer; `workers` is read on the training thread after each step (the
    /// coordinator's counters come in the step's record).
    func start(trainer: Trainer, title: String, workers: (() -> [WorkerRow])? = nil) throws -> MonitorServer? {
        guard let metrics else { return nil }
        let ref: ReferenceCurves?
        do { ref = try reference.map { try ReferenceCurves.load(path: $0, only: referenceConfig) } } catch let e as PlotError {
            throw ValidationError(e.description)
        }
        let monitor = RunMonitor(title: title, totalSteps: trainer.totalSteps,
                                 charsPerEpoch: Double(trainer.windowsPerEpoch * trainer.config.batch * trainer.config.bptt),
                                 reference: ref)
        trainer.onRecord = { [unowned trainer] in monitor.record($0, workers: workers?(), totalSteps: trainer.totalSteps) }
        trainer.onSample = { monitor.setSample($0) }
        let server: MonitorServer
        do { server = try MonitorServer(address: metrics, monitor: monitor) } catch let e as MonitorError {
            throw ValidationError(e.description)
        }
        // The address really bound comes first: `:PORT` is every interface, and says so.
        say("metrics server listening on \(server.boundAddress)\(server.listensOnAllInterfaces ? " (all interfaces)" : ""): "
            + "metrics at \(server.url)metrics, dashboard on \(server.url)")
        return server
    }
}

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plot train and validation loss against characters seen, one line per run, as an SVG file.")
    @Argument(help: "metrics.jsonl files of runs (each run is named after its directory).") var runs: [String]
    @Option(name: .shortAndLong, help: "SVG file to write.") var output: String = "curve.svg"
    @Option(help: "Overlay reference validation curves (JSON lines with cfg, epoch, val), e.g. ../shared/reference/pytorch_curves_h100.jsonl.")
    var reference: String?
    @Option(name: .customLong("reference-config"), help: "Only this reference configuration (repeatable).") var referenceConfig: [String] = []
    @Option(name: .customLong("chars-per-epoch"), help: "Characters per epoch, to place reference epochs (default: from the first run's epoch ends).")
    var charsPerEpoch: Double?
    @Option(help: "Chart title.") var title: String = "Bard: loss against characters seen"

    func run() throws {
        guard !runs.isEmpty else { throw ValidationError("give at least one metrics.jsonl") }
        do {
            let curves = try runs.map { try RunCurves.load(path: $0) }
            let ref = try reference.map { try ReferenceCurves.load(path: $0, only: referenceConfig) }
            if ref != nil && charsPerEpoch == nil && curves.allSatisfy({ $0.charsPerEpoch == nil }) {
                throw PlotError("no run has finished an epoch, so reference epochs cannot be placed: give --chars-per-epoch")
            }
            let svg = lossChart(runs: curves, reference: ref, charsPerEpoch: charsPerEpoch, title: title).svg()
            guard FileManager.default.createFile(atPath: output, contents: Data(svg.utf8)) else {
                throw PlotError("\(output): cannot write")
            }
            say("wrote \(output) (\(curves.count) run(s)\(ref.map { ", \($0.curves.count) reference curve(s)" } ?? ""))")
        } catch let e as PlotError {
            throw BardError.badInput(e.description)
        }
    }
}
