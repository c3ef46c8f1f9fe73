import NIOCore

/// The byte buffer of the async layer's reads and writes: SwiftNIO's `ByteBuffer` (from NIOCore
/// only), named here so that `import RingPortAsync` is enough to use it. Importing NIOCore as
/// well is fine; its `SocketAddress` then needs a module name beside RingPort's.
public typealias ByteBuffer = NIOCore.ByteBuffer
