import BardNumerics

/// The equations of one recurrent cell, for one time step: over a batch (training, with its backward beside it)
/// and over one stream (generation). A cell owns only its math; `RecurrentLayer` owns the weights, the input
/// projection, the time loop and the weight gradients, and asks the cell nothing else but what is declared here.
///
/// Shapes: H hidden, G = `gates`, B batch. Weights follow PyTorch: weight_hh (G*H, H), bias_hh (G*H).
///
/// Adding a cell touches only:
/// - its file in Cells/ (a struct conforming to `RecurrentCell`: forward, backward and generate side by side);
/// - a case of `CellKind` and its one mapping to the struct, `CellKind.cell(activation:)` (Config.swift);
/// - its two references: the per-step reference in Tests/BardModelTests/Reference.swift and the numpy one in
///   Tests/python/test_checkpoint_numpy.py (a `*_step` function and its branch in the forward).
public protocol RecurrentCell: Sendable {
    /// Gate blocks stacked in weight_ih / weight_hh.
    var gates: Int { get }
    /// Whether the cell carries a cell state c beside h (sizes c, tanhC, dcNext and the carried state).
    var hasCellState: Bool { get }
    /// Whether b_hh is added outside every nonlinearity, so that it folds into the input projection (one GEMM for
    /// the whole window). A cell that cannot fold it keeps h_{t-1} W_hh^T + b_hh apart (ws.hiddenProjection) and,
    /// in backward, the gradient of that hidden side apart from the input side (ws.dGatesHidden).
    var foldsHiddenBias: Bool { get }
    /// Whether `--activation` means anything to this cell.
    var usesActivation: Bool { get }

    /// Step t of a batch, in two halves that threads share (`RecurrentLayer.recur`; one thread calls both with
    /// everything). On entry, ws.gates rows of step t (B, G*H) hold the input side x W_ih^T + b_ih (+ b_hh when
    /// folded) and ws.h rows of step t hold h_{t-1} (ws.c likewise c_{t-1}).
    /// `project` adds h_{t-1} W_hh^T (+ b_hh, kept apart in ws.hiddenProjection when not folded) in the gate columns
    /// `gates` of G*H, for all B columns; `whh` is W_hh as this machine's kernels read it fastest (`HiddenWeight`).
    func project(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, bhh: UnsafePointer<Float>,
                 batch B: Int, hidden H: Int, gates: Range<Int>)
    /// Then `activate`, once every gate column is projected, does the rest for the batch columns `columns`: their
    /// gate rows hold what backward needs (the activations) and ws.h rows of step t + 1 hold h_t (ws.c, ws.tanhC
    /// likewise).
    func activate(ws: LayerWorkspace, step t: Int, batch B: Int, hidden H: Int, columns: Range<Int>)

    /// Backward of step t, in two halves likewise. `dOut` (T*B, H) is the gradient of the loss with respect to the
    /// layer's outputs; ws.dhNext (ws.dcNext) holds the gradient flowing into h_t (c_t) from step t + 1.
    /// `backwardColumns`, for the batch columns `columns`: writes their gate pre-activation gradients of step t into
    /// ws.dGatesInput (and ws.dGatesHidden), their dc_{t-1} into ws.dcNext and the part of dh_{t-1} that does not
    /// go through W_hh into ws.dhNext; returns their share of |dL/dh_t|^2 (the vanishing-gradient lesson).
    func backwardColumns(ws: LayerWorkspace, step t: Int, dOut: UnsafePointer<Float>, batch B: Int, hidden H: Int,
                         columns: Range<Int>) -> Float
    /// `backwardProject`, once the gate gradients of the batch columns `columns` are in: the hidden units `units`
    /// of their dh_{t-1} in ws.dhNext, through W_hh (`HiddenWeight.projectBack`). Threads share it by units (all
    /// columns) or by columns (all units), as the layout says (`RecurrentLayer.backwardThroughTime`).
    func backwardProject(ws: LayerWorkspace, step t: Int, whh: HiddenWeight, batch B: Int, hidden H: Int,
                         columns: Range<Int>, units: Range<Int>)

    /// One step of one stream, in place: `gates` (G*H) holds the input side as in forward; h (and c) hold the
    /// previous state and receive the new one. `scratch` (G*H) is free space.
    func generate(h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, gates: UnsafeMutablePointer<Float>,
                  scratch: UnsafeMutablePointer<Float>, whh: UnsafePointer<Float>, bhh: UnsafePointer<Float>, hidden H: Int)
}

extension RecurrentCell {
    public var usesActivation: Bool { false }
}
