//go:build linux

package main

import (
	"os"
	"syscall"
)

// followParent asks the kernel for SIGTERM when the process that started
// this one exits, so that `go run ./cmd/pullthrough up` stopped with SIGTERM
// (which goes to the go tool, not to this binary) still shuts the caches
// down and frees their ports.
func followParent() {
	ppid := os.Getppid()
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	if os.Getppid() != ppid {
		// The parent went away before the request took effect.
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
