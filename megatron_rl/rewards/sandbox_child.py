"""The sandboxed process's own setup, run by `python -I -B -c <this file's source> <config json>`.

`megatron_rl.rewards.sandbox` starts a fresh interpreter with this source and a JSON config; it
isolates itself, layer by layer, then runs the untrusted program in the same interpreter (an audit
hook only binds the interpreter it was added to, so the program cannot be exec'd into a new one).
Standard library only: it runs before, and apart from, anything of megatron_rl.

Layers, in order (each one that takes effect is named in the report line):
  user_ns, net_ns      a new user + network namespace: no interface but a down loopback
  readonly_fs          a new mount namespace where every mount is read-only except the work dir
  hidden_fs            chroot into a tmpfs with bind mounts of the runtime only (/usr, /lib*, /bin,
                       the interpreter's prefixes and sys.path, a few /dev nodes) and the work dir:
                       the training data, $HOME, /proc and the rest of the machine are not there
  disk_quota           the work dir is a fresh tmpfs of the configured size (total disk writes)
  no_capabilities      all capabilities dropped (the user namespace grants a full set), no new privs
  parent_death_signal  SIGKILL when the reward worker that started us dies
  rlimits              CPU seconds, address space, file size, processes, open files, no core dumps
  seccomp              kernel filter: no sockets, no fork/exec, no signals to other processes
  audit_hook           Python-level: sockets, DNS, processes, ctypes, file writes outside the work dir
The report line (JSON, on the report fd) is written last, right before the program starts; in
`asserts` mode the results follow on the same fd: `value k <repr>` for an `assert <expr> ==
<literal>` test (the parent compares it with the literal, which never comes here), `pass k` /
`fail k ...` for any other test block. A missing report line means setup failed.
"""
import builtins
import ctypes
import json
import os
import platform
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 1, 24, 28, 38, 22
SECCOMP_MODE_FILTER = 2
CLONE_THREAD = 0x00010000

# per architecture: AUDIT_ARCH, syscalls denied outright, and the specially checked ones
_ARCH = {
    "x86_64": dict(
        audit=0xC000003E, mount_setattr=442, capset=126,
        deny=dict(socket=41, fork=57, vfork=58, execve=59, execveat=322, ptrace=101, process_vm_writev=311,
                  io_uring_setup=425, pidfd_send_signal=424, unshare=272, setns=308),
        clone=56, clone3=435, kill=62, tkill=200, tgkill=234,
    ),
    "aarch64": dict(
        audit=0xC00000B7, mount_setattr=442, capset=91,
        deny=dict(socket=198, execve=221, execveat=281, ptrace=117, process_vm_writev=271,
                  io_uring_setup=425, pidfd_send_signal=424, unshare=97, setns=268),
        clone=220, clone3=435, kill=129, tkill=130, tgkill=131,
    ),
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _prctl(option, arg2=0, arg3=0, arg4=0, arg5=0) -> bool:
    return _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                       ctypes.c_ulong(arg5)) == 0


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _mount_setattr(nr, path, flags, attr_set=0, attr_clr=0) -> bool:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    return _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), os.fsencode(path), ctypes.c_uint(flags),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0


# what a program sees besides its work dir: the system's runtime and the interpreter's own trees
_RUNTIME_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_RUNTIME_FILES = ("/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


def _runtime_paths() -> tuple[list, list]:
    """Directories (outermost only) and files to show inside the hidden filesystem."""
    dirs = list(_RUNTIME_DIRS) + [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    dirs += [p for p in sys.path if p and os.path.isdir(p)]
    dirs = sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})
    outer = [d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs)]
    return outer, [f for f in _RUNTIME_FILES if os.path.exists(f)]


def _hide_filesystem(work: str, disk_bytes: int) -> list:
    """chroot into a tmpfs holding bind mounts of the runtime only, with `work` a fresh tmpfs of
    `disk_bytes` (the program's total disk quota). Returns the layers that took effect; on any
    failure before the chroot nothing changes (the caller's read-only mounts still apply)."""
    root = os.path.join(os.path.dirname(work), "root")
    bind = ctypes.c_ulong(MS_BIND | MS_REC)
    try:
        os.mkdir(root, 0o700)
        if _libc.mount(b"tmpfs", os.fsencode(root), b"tmpfs", ctypes.c_ulong(0), b"size=1m,mode=0755") != 0:
            return []
        dirs, files = _runtime_paths()
        for d in _RUNTIME_DIRS:  # merged-/usr systems: /lib -> usr/lib and the like, as on the host
            if os.path.islink(d):
                os.symlink(os.readlink(d), root + d)
        for d in dirs:
            target = root + d
            os.makedirs(target, exist_ok=True)
            if _libc.mount(os.fsencode(d), os.fsencode(target), None, bind, None) != 0:
                return []
        for f in files:
            target = root + f
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
            _libc.mount(os.fsencode(f), os.fsencode(target), None, bind, None)  # best effort: /dev may refuse
        os.makedirs(root + work)
        opts = f"size={max(disk_bytes, 4096)},mode=0700".encode()
        quota = _libc.mount(b"tmpfs", os.fsencode(root + work), b"tmpfs", ctypes.c_ulong(0), opts) == 0
        if not quota:
            _libc.mount(os.fsencode(work), os.fsencode(root + work), None, bind, None)
        os.makedirs(root + "/tmp", exist_ok=True)
        os.chroot(root)
    except OSError:
        return []
    os.chdir(work)
    return ["hidden_fs"] + (["disk_quota"] if quota else [])


def namespaces(work: str, arch, disk_bytes: int) -> list:
    """New user + network (+ mount) namespaces; the rest of the filesystem hidden (only the runtime
    and `work`, a tmpfs of `disk_bytes`, stay visible) and read-only except `work`."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS) != 0:
        return []
    try:  # keep our own ids inside (files we create in `work` stay ours to delete)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError:
        pass  # unmapped ids show as 65534 inside; the namespaces hold all the same
    layers = ["user_ns", "net_ns"]
    if arch is None:
        return layers
    if _libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        return layers
    hidden = _hide_filesystem(work, disk_bytes)
    wb = os.fsencode(work)
    if ((hidden or _libc.mount(wb, wb, None, ctypes.c_ulong(MS_BIND | MS_REC), None) == 0)
            and _mount_setattr(arch["mount_setattr"], "/", AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY)
            and _mount_setattr(arch["mount_setattr"], work, 0, attr_clr=MOUNT_ATTR_RDONLY)):
        layers.append("readonly_fs")
    os.chdir(work)  # our cwd still points into the mount below the new one: step onto it
    return layers + hidden


def drop_capabilities(arch) -> bool:
    """No capabilities now or after an exec (root in the new user namespace has them all)."""
    for cap in range(64):
        if not _prctl(PR_CAPBSET_DROP, cap):
            break
    _prctl(PR_SET_SECUREBITS, 0x0F)  # NOROOT, NO_SETUID_FIXUP, both locked (needs CAP_SETPCAP)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words: all zero
    capset = arch["capset"] if arch else None
    ok = capset is not None and _libc.syscall(ctypes.c_long(capset), header, data) == 0
    return _prctl(PR_SET_NO_NEW_PRIVS, 1) and ok


def set_limits(limits: dict) -> None:
    cpu = int(limits["cpu_s"])
    for what, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # soft: SIGXCPU, hard: SIGKILL
        (resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"]),
        (resource.RLIMIT_FSIZE, limits["file_bytes"], limits["file_bytes"]),
        (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(what, (soft, hard))


def seccomp(arch) -> bool:
    """Deny sockets, new processes, exec and signals to others; threads stay allowed."""
    if arch is None:
        return False
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    me = os.getpid()
    # (code, jump-if-true label, jump-if-false label, k); labels resolved below
    prog = [
        (0x20, None, None, 4),  # A = arch
        (0x15, None, "KILL", arch["audit"]),  # another ABI: kill
        (0x20, None, None, 0),  # A = syscall number
    ]
    if platform.machine() == "x86_64":
        prog.append((0x35, "EPERM", None, 0x40000000))  # x32 ABI numbers: deny
    for nr in arch["deny"].values():
        prog.append((0x15, "EPERM", None, nr))
    prog += [
        (0x15, "CLONE", None, arch["clone"]),
        (0x15, "ENOSYS", None, arch["clone3"]),  # libc falls back to clone, whose flags we can read
        (0x15, "SELF", None, arch["kill"]),
        (0x15, "SELF", None, arch["tkill"]),
        (0x15, "SELF", None, arch["tgkill"]),
        (0x06, None, None, allow),
        ("CLONE", 0x20, None, None, 16),  # A = low word of args[0] (flags)
        (0x45, "ALLOW", "EPERM", CLONE_THREAD),
        ("SELF", 0x20, None, None, 16),  # A = low word of args[0] (pid)
        (0x15, "ALLOW", None, me),
        (0x15, "ALLOW", "EPERM", 0),  # kill(0, sig): our own process group
        ("ALLOW", 0x06, None, None, allow),
        ("EPERM", 0x06, None, None, eperm),
        ("ENOSYS", 0x06, None, None, enosys),
        ("KILL", 0x06, None, None, kill),
    ]
    labels, body = {}, []
    for ins in prog:
        if isinstance(ins[0], str):
            labels[ins[0]] = len(body)
            ins = ins[1:]
        body.append(ins)

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    table = (Filter * len(body))()
    for i, (code, jt, jf, k) in enumerate(body):
        table[i] = Filter(code, labels[jt] - i - 1 if jt else 0, labels[jf] - i - 1 if jf else 0, k)
    fprog = Prog(len(body), table)
    return _prctl(PR_SET_NO_NEW_PRIVS, 1) and _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                                                          ctypes.byref(fprog), 0, 0) == 0


def make_audit_hook(work: str):
    """A hook refusing network, processes, ctypes calls and file changes outside `work`.

    Not a security boundary on its own (PEP 578): C code and a determined program get around it.
    It makes ordinary library calls fail fast with a clear PermissionError.
    """
    realpath, fsdecode, sep, me = os.path.realpath, os.fsdecode, os.sep, os.getpid()
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    network = frozenset({"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                         "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                         "socket.gethostbyaddr", "socket.getnameinfo"})
    processes = frozenset({"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                           "subprocess.Popen", "os.startfile"})
    # event -> where its dir_fd argument is (None: it has none)
    one_path = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 2, "os.chmod": 2, "os.chown": 3, "os.utime": 3,
                "os.truncate": None, "os.chflags": None, "os.lchflags": None}

    def inside(path, dir_fd=-1) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        if dir_fd not in (-1, None):
            return False
        p = realpath(fsdecode(path))
        return p == work or p.startswith(work + sep) or p == "/dev/null"

    def hook(event, args):
        if event in network:
            raise PermissionError(f"sandbox: network access is blocked ({event})")
        if event in processes:
            raise PermissionError(f"sandbox: starting processes is blocked ({event})")
        if event in ("os.kill", "os.killpg") and args[0] not in (me, 0):
            raise PermissionError("sandbox: signalling other processes is blocked")
        if event in ("ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata"):
            raise PermissionError(f"sandbox: foreign function calls are blocked ({event})")
        if event == "open" and (args[2] or 0) & write_flags and not inside(args[0]):
            raise PermissionError(f"sandbox: writing outside the work directory is blocked ({args[0]})")
        if event in one_path:
            at = one_path[event]
            ok = inside(args[0], args[at] if at is not None else -1)
        elif event in ("os.rename", "os.link"):
            ok = inside(args[0], args[2]) and inside(args[1], args[3])
        elif event == "os.symlink":  # where the link goes is checked when something opens it
            ok = inside(args[1], args[2])
        else:
            return
        if not ok:
            raise PermissionError(f"sandbox: changing files outside the work directory is blocked ({event})")

    return hook


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def main() -> None:
    cfg = json.loads(sys.argv[1])
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the worker blocks SIGALRM around our start
    report = cfg["report_fd"]
    work = os.path.realpath(os.getcwd())
    arch = _ARCH.get(platform.machine()) if sys.platform == "linux" else None
    layers = []
    with open(cfg["program"], encoding="utf-8") as f:  # read before `work` becomes a fresh tmpfs
        source = f.read()
    asserts = None
    if cfg["asserts"]:
        with open(cfg["asserts"], encoding="utf-8") as f:
            asserts = json.load(f)
        os.remove(cfg["asserts"])
    if cfg["namespaces"]:
        layers += namespaces(work, arch, cfg["limits"]["disk_bytes"])
        if not os.path.exists(cfg["program"]):  # a fresh tmpfs: the program's own file, as before
            with open(cfg["program"], "w", encoding="utf-8") as f:
                f.write(source)
    if drop_capabilities(arch):
        layers.append("no_capabilities")
    # set after the credential changes above (a change of credentials may clear it)
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL):
        layers.insert(0, "parent_death_signal")
    if os.getppid() != cfg["parent"]:  # the worker died before the line above
        os._exit(70)
    set_limits(cfg["limits"])
    layers.append("rlimits")
    if cfg["seccomp"] and seccomp(arch):
        layers.append("seccomp")
    if cfg["audit_hook"]:
        sys.addaudithook(make_audit_hook(work))
        layers.append("audit_hook")
    os.write(report, (json.dumps({"layers": layers}) + "\n").encode())
    sys.argv = [cfg["program"]]
    if asserts is None:
        os.close(report)
        exec(compile(source, "solution.py", "exec"),
             {"__name__": "__main__", "__file__": "solution.py", "__builtins__": builtins})
        return
    # asserts: define the program as a module, then run each test in its namespace. The builtins the
    # harness needs are bound now: a program that replaces builtins.exec or repr does not reach them.
    # An {"expr"} test sends back repr(value) and the parent judges it against a literal it keeps.
    run_code, evaluate, compile_, repr_, write, exit_ = exec, eval, compile, repr, os.write, os._exit
    namespace = {"__name__": "solution", "__file__": "solution.py", "__builtins__": builtins}
    try:
        run_code(compile_(source, "solution.py", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in the program fails every test
        write(report, f"program {_one_line(exc)}\n".encode())
        exit_(1)
    for k, test in enumerate(asserts):
        try:
            if "expr" in test:
                value = evaluate(compile_(test["expr"], f"<test {k}>", "eval"), namespace)
                line = f"value {k} {repr_(value)}".replace("\n", " ")
            else:
                run_code(compile_(test["block"], f"<test {k}>", "exec"), namespace)
                line = f"pass {k}"
        except BaseException as exc:  # noqa: BLE001
            line = f"fail {k} {_one_line(exc)}"
        write(report, (line + "\n").encode())
    write(report, b"end\n")
    sys.stdout.flush()
    exit_(0)


if __name__ == "__main__":
    main()
