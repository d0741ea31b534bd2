//go:build !linux

package loadgen

import "syscall"

func stepCASysProcAttr() *syscall.SysProcAttr { return nil }
