import Foundation

/// One line of a chart.
public struct Series: Sendable {
    public enum Style: Sendable { case solid, thin, dashed }
    public var name: String
    public var points: [(x: Double, y: Double)]
    public var style: Style
    /// Index into the palette: series of one run share a colour.
    public var colour: Int
    public var markers: Bool
    public init(name: String, points: [(x: Double, y: Double)], style: Style = .solid, colour: Int, markers: Bool = false) {
        self.name = name; self.points = points; self.style = style; self.colour = colour; self.markers = markers
    }
}

/// A self-contained SVG line chart (no scripts, no external references), for `bard plot` and the dashboard.
public struct LineChart: Sendable {
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [Series]
    public var width = 860.0
    public var height = 480.0
    /// Losses start near ln(vocabulary) and fall fast; capping the top keeps the interesting part readable.
    public var yCap: Double?

    public init(title: String, xLabel: String, yLabel: String, series: [Series], yCap: Double? = nil) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series; self.yCap = yCap
    }

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]
    static let margin = (left: 64.0, right: 210.0, top: 36.0, bottom: 52.0)

    public func svg() -> String {
        let m = LineChart.margin
        let plotW = width - m.left - m.right, plotH = height - m.top - m.bottom
        let all = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        var x0 = all.map(\.x).min() ?? 0, x1 = all.map(\.x).max() ?? 1
        var y0 = all.map(\.y).min() ?? 0, y1 = all.map(\.y).max() ?? 1
        if let cap = yCap { y1 = min(y1, max(cap, y0 + 0.1)) }
        if x1 <= x0 { x1 = x0 + 1 }
        if y1 <= y0 { y1 = y0 + 1 }
        x0 = min(x0, 0)
        let pad = (y1 - y0) * 0.05
        y0 -= pad; y1 += pad
        func px(_ x: Double) -> Double { m.left + (x - x0) / (x1 - x0) * plotW }
        func py(_ y: Double) -> Double { m.top + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * plotH }
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(m.left))" y="22" font-size="15" font-weight="bold">\(escape(title))</text>

        """
        for t in LineChart.ticks(x0, x1) {
            out += "<line x1=\"\(f(px(t)))\" y1=\"\(f(m.top))\" x2=\"\(f(px(t)))\" y2=\"\(f(m.top + plotH))\" stroke=\"#eee\"/>"
            out += "<text x=\"\(f(px(t)))\" y=\"\(f(m.top + plotH + 16))\" text-anchor=\"middle\">\(LineChart.short(t))</text>\n"
        }
        for t in LineChart.ticks(y0, y1) {
            out += "<line x1=\"\(f(m.left))\" y1=\"\(f(py(t)))\" x2=\"\(f(m.left + plotW))\" y2=\"\(f(py(t)))\" stroke=\"#eee\"/>"
            out += "<text x=\"\(f(m.left - 6))\" y=\"\(f(py(t) + 4))\" text-anchor=\"end\">\(LineChart.short(t))</text>\n"
        }
        out += "<rect x=\"\(f(m.left))\" y=\"\(f(m.top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" fill=\"none\" stroke=\"#444\"/>\n"
        out += "<text x=\"\(f(m.left + plotW / 2))\" y=\"\(f(height - 12))\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        out += "<text transform=\"translate(16 \(f(m.top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (i, s) in series.enumerated() {
            let colour = LineChart.palette[s.colour % LineChart.palette.count]
            let pts = s.points.filter { $0.x.isFinite && $0.y.isFinite }
            let dash = s.style == .dashed ? " stroke-dasharray=\"6 4\"" : ""
            let widthAttr = s.style == .thin ? "1" : "2"
            if !pts.isEmpty {
                let d = pts.enumerated().map { (k, p) in (k == 0 ? "M" : "L") + f(px(p.x)) + " " + f(py(p.y)) }.joined(separator: " ")
                out += "<path class=\"series\" data-name=\"\(escape(s.name))\" d=\"\(d)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"\(widthAttr)\"\(dash)/>\n"
                if s.markers {
                    for p in pts { out += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3\" fill=\"\(colour)\"/>" }
                    out += "\n"
                }
            }
            let ly = m.top + 8 + Double(i) * 18
            let lx = m.left + plotW + 12
            out += "<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 22))\" y2=\"\(f(ly))\" stroke=\"\(colour)\" stroke-width=\"\(widthAttr)\"\(dash)/>"
            out += "<text x=\"\(f(lx + 28))\" y=\"\(f(ly + 4))\">\(escape(String(s.name.prefix(26))))</text>\n"
        }
        out += "</svg>\n"
        return out
    }

    func f(_ v: Double) -> String { String(format: "%.1f", v) }

    /// About five round tick values covering lo...hi.
    static func ticks(_ lo: Double, _ hi: Double) -> [Double] {
        let raw = (hi - lo) / 5
        let p = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 2.5, 5, 10].map { $0 * p }.first { $0 >= raw } ?? 10 * p
        var t = ceil(lo / step) * step
        var out: [Double] = []
        while t <= hi + step * 1e-9 && out.count < 20 { out.append(t); t += step }
        return out
    }

    /// 1.5M, 200k, 1.25.
    static func short(_ v: Double) -> String {
        let a = abs(v)
        if a >= 1e6 { return trim(String(format: "%.2f", v / 1e6)) + "M" }
        if a >= 1e4 { return trim(String(format: "%.1f", v / 1e3)) + "k" }
        return trim(String(format: "%.2f", v))
    }

    static func trim(_ s: String) -> String {
        guard s.contains(".") else { return s }
        var t = s
        while t.hasSuffix("0") { t.removeLast() }
        if t.hasSuffix(".") { t.removeLast() }
        return t
    }
}

/// Text for SVG and HTML.
public func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
