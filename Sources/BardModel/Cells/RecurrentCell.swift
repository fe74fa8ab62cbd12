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

    /// Step t of a batch. On entry, ws.gates rows of step t (B, G*H) hold the input side x W_ih^T + b_ih (+ b_hh
    /// when folded) and ws.h rows of step t hold h_{t-1} (ws.c likewise c_{t-1}); on return the gate rows hold what
    /// backward needs (the activations) and ws.h rows of step t + 1 hold h_t (ws.c, ws.tanhC likewise). `whhT` is
    /// W_hh transposed, (H, G*H), made once per window.
    func forward(ws: LayerWorkspace, step t: Int, whhT: UnsafePointer<Float>, bhh: UnsafePointer<Float>,
                 batch B: Int, hidden H: Int)

    /// Backward of step t. Takes W_hh (not transposed) and `dOut` (T*B, H), the gradient of the loss with respect to
    /// the layer's outputs. Reads ws.dhNext (ws.dcNext), the gradient flowing into h_t (c_t) from step t + 1, and
    /// overwrites it with the gradient of h_{t-1} (c_{t-1}); writes the gate pre-activation gradients of step t into
    /// ws.dGatesInput (and ws.dGatesHidden). Returns |dL/dh_t|^2 (the vanishing-gradient lesson).
    func backward(ws: LayerWorkspace, step t: Int, dOut: UnsafePointer<Float>, whh: UnsafePointer<Float>,
                  batch B: Int, hidden H: Int) -> Float

    /// One step of one stream, in place: `gates` (G*H) holds the input side as in forward; h (and c) hold the
    /// previous state and receive the new one. `scratch` (G*H) is free space.
    func generate(h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>, gates: UnsafeMutablePointer<Float>,
                  scratch: UnsafeMutablePointer<Float>, whh: UnsafePointer<Float>, bhh: UnsafePointer<Float>, hidden H: Int)
}

extension RecurrentCell {
    public var usesActivation: Bool { false }
}
