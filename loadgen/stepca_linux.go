package loadgen

import "syscall"

// stepCASysProcAttr has the kernel kill step-ca if the load generator
// dies without stopping it (killed by a test's timeout, say), so no
// orphaned CA keeps a port and a core on a shared machine. (Pdeathsig
// follows the thread that started the process; Go keeps threads alive
// unless a goroutine exits locked to one, which nothing here does.)
func stepCASysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
