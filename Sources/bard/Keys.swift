import ArgumentParser
import BardCluster
import BardModel
import BardTransport
import Foundation

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the CURVE keys that authenticate and encrypt cluster traffic.", subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a coordinator key pair, a worker key pair and authorized_keys into DIR (or, with --client, add a client).",
            discussion: """
            The coordinator host needs coordinator.key and authorized_keys; worker and fetch hosts need coordinator.pub \
            and client.key (or NAME.key). authorized_keys lists each client key with its role (KEY ROLE NAME): a key \
            may only act in that role, e.g. a fetch key cannot join as a worker. Every file is written with mode 0600; \
            existing keys are never overwritten.
            """)
        @Option(help: "Directory to write the keys into.") var out: String
        @Option(help: "Add a client key pair NAME.key/NAME.pub and admit it in authorized_keys.") var client: String?
        @Option(help: "The role of the --client key: \(PeerRole.allCases.map(\.rawValue).joined(separator: ", ")).")
        var role: String?

        func validate() throws {
            if let role, PeerRole(rawValue: role) == nil {
                throw ValidationError("--role \(role): expected one of \(PeerRole.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            if role != nil && client == nil {
                throw ValidationError("--role needs --client NAME (the default client pair is a worker)")
            }
        }

        func run() throws {
            let files: [String]
            do {
                files = try KeyDirectory.generate(in: out, client: client, role: role.flatMap(PeerRole.init(rawValue:)) ?? .worker)
            } catch let error as ZMQError {
                // Key files are user input: their errors end the command with a one-line message.
                throw BardError.badInput("\(error)")
            }
            for f in files { say("wrote \(f)") }
        }
    }
}
