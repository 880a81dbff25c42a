import Distributed
import Foundation
import TensorEngine

// collective-check: run under Launch/mpirun-local by the distributed tests. Checks
// on every rank that the MPI collectives and the gradient buckets give exact sums
// (values are small integers, so float sums are exact in any order), with
// parameter sizes and bucket sizes given on the command line; the buckets are reduced
// by blocking MPI_Allreduce and by polled MPI_Iallreduce, and in one round the
// forward leaves a parameter unused (its gradient must come back zero):
//   collective-check SIZES BUCKET_BYTES FIRST_BUCKET_BYTES
// e.g. "7,1,300,13,64" 40 16. Prints "ok <rank> <buckets>" or exits non-zero.

let arguments = CommandLine.arguments
guard arguments.count == 4, let bucketBytes = Int(arguments[2]), let firstBytes = Int(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: collective-check SIZES BUCKET_BYTES FIRST_BUCKET_BYTES\n".utf8))
    exit(2)
}
let sizes = arguments[1].split(separator: ",").compactMap { Int($0) }
let comm = try makeCommunicator()
let r = comm.rank, n = comm.size

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("rank \(r): \(message)\n".utf8))
    exit(1)
}

// Scalar collectives.
if try comm.sum(Double(r + 1)) != Double(n * (n + 1) / 2) { fail("sum of doubles") }
if try comm.sum(Int64(r)) != Int64(n * (n - 1) / 2) { fail("sum of integers") }
if try comm.all(true) != true || comm.all(r != n - 1) != false { fail("agreement") }
if try comm.broadcast("from rank 0: \(r)") != "from rank 0: 0" { fail("broadcast") }
let gathered = try comm.allGather([UInt8(r), UInt8(r * 2)])
if gathered != (0..<n).flatMap({ [UInt8($0), UInt8($0 * 2)] }) { fail("all-gather \(gathered)") }

// Gradient buckets over a padded arena, reduced through the tape's readiness hooks.
var offsets: [Int] = [], total = 0
for s in sizes { offsets.append(total); total += (s + 15) / 16 * 16 }
let arena = Tensor(zeros: [total])
let parameters = sizes.enumerated().map { i, s -> Tensor in
    let t = Tensor(shape: [s], storage: TensorStorage(viewing: arena.pointer + offsets[i], count: s, owner: arena.storage),
                   requiresGrad: true)
    t.readyIndex = i
    return t
}
let synchronizers = [nil, 50e-6].map {
    GradientSynchronizer(gradients: arena.pointer, parameters: parameters, offsets: offsets, arenaCount: total,
                         communicator: comm, firstBucketBytes: firstBytes, bucketBytes: bucketBytes, pollInterval: $0)
}
// Gradients are views into the arena, as the trainer sets them up.
for (i, p) in parameters.enumerated() {
    p.grad = Tensor(shape: [p.count], storage: TensorStorage(viewing: arena.pointer + offsets[i], count: p.count, owner: arena.storage))
}
for (sync, round) in synchronizers.flatMap({ s in (0..<3).map { (s, $0) } }) {
    let unused = round == 1 && parameters.count > 1 ? parameters.count / 2 : nil
    arena.pointer.update(repeating: 0, count: total)
    sync.beginBackward()
    var loss: Tensor?
    for (i, p) in parameters.enumerated().reversed() where i != unused {   // forward order: ready in arena order in backward
        let c = Tensor(shape: [p.count], scalars: (0..<p.count).map { Float(r + i + $0 + round) })
        let term = (p * c).sum()
        loss = loss.map { $0 + term } ?? term
    }
    loss!.backward()
    try sync.finish()
    for (i, p) in parameters.enumerated() {
        let g = p.grad!.scalars
        for j in 0..<p.count {
            let expected = i == unused ? 0 : Float(n * (i + j + round) + n * (n - 1) / 2)
            if g[j] != expected { fail("round \(round)\(sync.pollInterval == nil ? "" : " (polled)"): parameter \(i)[\(j)] is \(g[j]), expected \(expected)") }
        }
    }
}
print("ok \(r) \(synchronizers[0].buckets.count)")
(comm as? MPICommunicator)?.finalize()
