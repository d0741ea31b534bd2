//go:build !linux

package loadgen

import (
	"errors"
	"os"
	"time"
)

var errNoProc = errors.New("loadgen: process figures need Linux /proc")

// ProcessCPU needs Linux.
func ProcessCPU(pid int) (time.Duration, error) { return 0, errNoProc }

// ProcessMemory needs Linux.
func ProcessMemory(pid int) (rss, peak uint64, err error) { return 0, 0, errNoProc }

// MachineCPU needs Linux.
func MachineCPU() (busy, total time.Duration, err error) { return 0, 0, errNoProc }

// ListenerPID needs Linux.
func ListenerPID(port int) (int, error) { return 0, errNoProc }

func protectStdout() (*os.File, error) { return os.Stdout, nil }
