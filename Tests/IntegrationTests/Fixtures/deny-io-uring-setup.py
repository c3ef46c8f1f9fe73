#!/usr/bin/env python3
"""Runs a command with io_uring_setup denied by a seccomp filter.

    deny-io-uring-setup.py ERRNO COMMAND [ARGUMENT ...]

The filter makes io_uring_setup (x86_64 system call 425) fail with ERRNO and allows every other
system call, the way a container runtime's default seccomp profile blocks io_uring. It is
installed in this process (with no_new_privs) and inherited by the command it execs.
"""
import ctypes
import os
import platform
import struct
import sys

if platform.machine() != "x86_64":
    sys.exit("deny-io-uring-setup.py: only x86_64 system call numbers are known")

IO_URING_SETUP = 425
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def instruction(code, k, jump_true=0, jump_false=0):
    return struct.pack("HBBI", code, jump_true, jump_false, k)


errno_value = int(sys.argv[1])
program = b"".join([
    instruction(BPF_LD_W_ABS, 0),                       # load the system call number
    instruction(BPF_JEQ_K, IO_URING_SETUP, 0, 1),       # io_uring_setup?
    instruction(BPF_RET_K, SECCOMP_RET_ERRNO | errno_value),
    instruction(BPF_RET_K, SECCOMP_RET_ALLOW),
])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


libc = ctypes.CDLL(None, use_errno=True)
buffer = ctypes.create_string_buffer(program)
fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): errno {ctypes.get_errno()}")
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_SECCOMP): errno {ctypes.get_errno()}")
os.execvp(sys.argv[2], sys.argv[2:])
