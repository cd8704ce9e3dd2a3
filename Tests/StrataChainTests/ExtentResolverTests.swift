import StrataFormat
import XCTest

@testable import StrataChain

final class ExtentResolverTests: XCTestCase {
    /// Against a per-block model: for random stacks of images, each block resolves to the newest image that
    /// holds it, with the right frame and position.
    func testNewestWinsAgainstABlockModel() {
        var rng = SeededGenerator(seed: 11)
        for _ in 0..<200 {
            let blocks = Int.random(in: 1...300, using: &rng)
            var images: [[ExtentRecord]] = []
            var model: [(image: Int, kind: ExtentKind, frame: UInt32, frameBlock: UInt32)] = []
            for i in 0..<Int.random(in: 1...6, using: &rng) {
                var extents: [ExtentRecord] = []
                var b = 0
                var frame: UInt32 = 0
                var used: UInt32 = 0
                while b < blocks {
                    let gap = i == 0 ? 0 : Int.random(in: 0...20, using: &rng)
                    b += gap
                    if b >= blocks { break }
                    let n = Int.random(in: 1...min(15, blocks - b), using: &rng)
                    let kind: ExtentKind = Bool.random(using: &rng) ? .data : .zero
                    if kind == .data && used > 10 {
                        frame += 1
                        used = 0
                    }
                    extents.append(ExtentRecord(firstBlock: UInt64(b), blockCount: UInt32(n), kind: kind, frame: kind == .data ? frame : 0, frameBlock: kind == .data ? used : 0))
                    for k in 0..<n {
                        let entry = (image: i, kind: kind, frame: kind == .data ? frame : 0, frameBlock: kind == .data ? used + UInt32(k) : 0)
                        if i == 0 { model.append(entry) } else { model[b + k] = entry }
                    }
                    if kind == .data { used += UInt32(n) }
                    b += n
                }
                images.append(extents)
            }
            let resolved = ExtentResolver.resolve(images)
            var next: UInt64 = 0
            for e in resolved {
                XCTAssertEqual(e.firstBlock, next, "resolved extents are contiguous and in order")
                for k in 0..<Int(e.blockCount) {
                    let m = model[Int(e.firstBlock) + k]
                    XCTAssertEqual(Int(e.image), m.image)
                    XCTAssertEqual(e.kind, m.kind)
                    if e.kind == .data {
                        XCTAssertEqual(e.frame, m.frame)
                        XCTAssertEqual(e.frameBlock + UInt32(k), m.frameBlock)
                    }
                }
                next = e.endBlock
            }
            XCTAssertEqual(next, UInt64(blocks))
        }
    }
}
