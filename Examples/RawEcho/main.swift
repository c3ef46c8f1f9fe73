// RawEcho: the classic I/O completion port echo server, on RingPort's raw port API.
// Each connection owns one per-I/O context (a buffer) that goes back and forth between
// OP_READ and OP_WRITE: a read completes → write those bytes back; the write completes →
// post the next read; 0 bytes (the peer closed) or an error → close the handle, free the context.
// Usage: RawEcho [port] (or PORT=...; default 8888). Stops on SIGINT or SIGTERM.
import Glibc
import RingPort

var signals = sigset_t()  // blocked before any thread starts, taken by sigwait at the end
sigemptyset(&signals)
sigaddset(&signals, SIGINT)
sigaddset(&signals, SIGTERM)
pthread_sigmask(SIG_BLOCK, &signals, nil)

let portArgument = CommandLine.arguments.dropFirst().first ?? getenv("PORT").map { String(cString: $0) }
let port = try CompletionPort()  // the completion port: io_uring underneath
let listener = try port.associate(
    descriptor: TCPSocket.makeListener(
        address: SocketAddress(host: "127.0.0.1", port: UInt16(portArgument ?? "8888") ?? 8888)))
let contexts = ContextPool(bufferSize: 16384)  // per-I/O contexts, recycled

let workers = WorkerPool(port: port) { completion in  // CPU × 2 + 2 threads dequeue completions
    guard let handle = completion.handle, let context = completion.context else { return }
    switch completion.operation {
    case .accept where !completion.isCancelled:  // a new connection: its context, its first read
        if let descriptor = completion.acceptedDescriptor,
            let connection = try? port.associate(descriptor: descriptor)
        {
            try? port.read(connection, into: contexts.take())
        }
        try? port.accept(on: handle, context: context)  // and accept the next one
    case .read where completion.error == nil && completion.bytesTransferred > 0:  // OP_READ done
        context.count = completion.bytesTransferred
        context.offset = 0
        try? port.write(handle, from: context, range: 0..<context.count)
    case .write where completion.error == nil:  // OP_WRITE done
        context.offset += completion.bytesTransferred
        if context.offset < context.count {  // a short send: send the rest first
            try? port.write(handle, from: context, range: context.offset..<context.count)
        } else {
            try? port.read(handle, into: context)  // all written: post the next read
        }
    case .accept: break  // cancelled: the listener was closed
    default:  // 0 bytes (the peer closed) or an error: close and free
        port.close(handle)
        contexts.recycle(context)
    }
}
try workers.start()
for _ in 0..<4 { try port.accept(on: listener, context: IOContext(capacity: 0)) }
print("RawEcho listening on \(try TCPSocket.localAddress(of: listener.descriptor))")
fflush(nil)

var received: Int32 = 0
while sigwait(&signals, &received) != 0 {}
port.closeAllHandles()  // the listener and every connection: pending operations end, cancelled
while port.statistics.operationsInFlight + port.statistics.completionsWaiting > 0 { usleep(1000) }
workers.shutdown()  // once every completion was handled (and every context freed)
port.close()
print("RawEcho stopped")
