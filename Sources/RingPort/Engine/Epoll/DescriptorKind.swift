import Glibc

// This file imports Glibc alone, on purpose. glibc's socket types (`SOCK_STREAM`, ...) are
// declared both by Glibc and, textually, by CLiburing (its header includes <sys/socket.h>); when
// a file that imports both names one of them, the compiler may take CLiburing's declaration as
// the one, and the files that import only Glibc (TCPSocket, UDPSocket) stop finding it in a
// clean build.

extension DescriptorTable.Kind {
    /// What `descriptor` is (`fstat`, and `SO_TYPE` for sockets); `.other` when it cannot be told.
    init(of descriptor: Int32) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            self = .other
            return
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG, S_IFBLK:
            self = .file
        case S_IFSOCK:
            var type: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            let known = getsockopt(descriptor, SOL_SOCKET, SO_TYPE, &type, &length) == 0
            self = known && type == Int32(SOCK_STREAM.rawValue) ? .streamSocket : .otherSocket
        default:
            self = .other
        }
    }
}
