package jail

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The filter refuses, with EPERM, every way of giving a file the set-uid
// or set-gid bit, and of making a device: chmod, fchmod, fchmodat,
// fchmodat2 with such a mode, mknod, mknodat with such a mode or of a
// character or block device, open, openat, creat creating a file with one, and mkdir,
// mkdirat with set-uid (a set-gid folder only passes its group on to new
// files, and the kernel gives it to folders made in one anyway). openat2 (whose mode sits in a struct a filter cannot
// read) and io_uring_setup (whose operations bypass seccomp) fail with
// ENOSYS, so programs fall back to the calls above. Other architectures'
// system calls (i386, x32) are refused.

const (
	setID = unix.S_ISUID | unix.S_ISGID
	// sIFCHR is set in the file type of character and block devices
	// (and of symbolic links, which mknod does not make): since Linux
	// 5.8 anyone may make a 0:0 character device (an overlayfs
	// whiteout), so mknod of either kind is refused.
	sIFCHR = unix.S_IFCHR

	sysOpen         = 2
	sysCreat        = 85
	sysOpenat       = 257
	sysChmod        = 90
	sysFchmod       = 91
	sysFchmodat     = 268
	sysFchmodat2    = 452
	sysMknod        = 133
	sysMknodat      = 259
	sysMkdir        = 83
	sysMkdirat      = 258
	sysOpenat2      = 437
	sysIoUringSetup = 425
	sysSetresuid    = 117
	sysSetresgid    = 119

	auditArchX8664 = 0xc000003e
	x32Bit         = 0x40000000

	retAllow = unix.SECCOMP_RET_ALLOW
	retEPERM = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retNOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	retFake  = unix.SECCOMP_RET_ERRNO // errno 0: "succeeded", did nothing

	// offsets into struct seccomp_data
	offNR   = 0
	offArch = 4
	offArgs = 16
)

// modeArg is a system call whose argument mode (index) must not carry
// set-id bits; flags, when >= 0, is the index of open flags without
// which mode is not looked at (no O_CREAT, no O_TMPFILE: no file made).
type modeArg struct {
	nr          uint32
	mode, flags int
	bits        uint32
}

var modeCalls = []modeArg{
	{sysChmod, 1, -1, setID}, {sysFchmod, 1, -1, setID}, {sysFchmodat, 2, -1, setID}, {sysFchmodat2, 2, -1, setID},
	{sysMknod, 1, -1, setID | sIFCHR}, {sysMknodat, 2, -1, setID | sIFCHR}, {sysMkdir, 1, -1, unix.S_ISUID}, {sysMkdirat, 2, -1, unix.S_ISUID},
	{sysCreat, 1, -1, setID}, {sysOpen, 2, 1, setID}, {sysOpenat, 3, 2, setID},
}

func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jump(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
}

// program is the filter's BPF; with fakeSetID, setresuid and setresgid
// return success without running.
func program(fakeSetID bool) []unix.SockFilter {
	const (
		ld  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jge = unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K
		jst = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
	)
	p := []unix.SockFilter{
		stmt(ld, offArch),
		jump(jeq, auditArchX8664, 1, 0),
		stmt(ret, retEPERM),
		stmt(ld, offNR),
		jump(jge, x32Bit, 0, 1),
		stmt(ret, retEPERM),
		jump(jeq, sysOpenat2, 0, 1),
		stmt(ret, retNOSYS),
		jump(jeq, sysIoUringSetup, 0, 1),
		stmt(ret, retNOSYS),
	}
	if fakeSetID {
		p = append(p,
			jump(jeq, sysSetresuid, 0, 1),
			stmt(ret, retFake),
			jump(jeq, sysSetresgid, 0, 1),
			stmt(ret, retFake),
		)
	}
	for _, c := range modeCalls {
		// The low 32 bits of an argument (little endian).
		arg := func(i int) uint32 { return uint32(offArgs + 8*i) }
		var body []unix.SockFilter
		if c.flags >= 0 {
			body = append(body,
				stmt(ld, arg(c.flags)),
				jump(jst, unix.O_CREAT|unix.O_TMPFILE&^unix.O_DIRECTORY, 1, 0),
				stmt(ret, retAllow),
			)
		}
		body = append(body,
			stmt(ld, arg(c.mode)),
			jump(jst, c.bits, 0, 1),
			stmt(ret, retEPERM),
			stmt(ret, retAllow),
		)
		p = append(p, jump(jeq, c.nr, 0, uint8(len(body))))
		p = append(p, body...)
	}
	return append(p, stmt(ret, retAllow))
}

// installFilter loads the filter on this thread (no_new_privs is set).
func installFilter(fakeSetID bool) error {
	if runtime.GOARCH != "amd64" {
		return fmt.Errorf("the jail's filter is written for amd64, not %s", runtime.GOARCH)
	}
	prog := program(fakeSetID)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("install the seccomp filter: %w", errno)
	}
	return nil
}
