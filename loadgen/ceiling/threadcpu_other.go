//go:build !linux

package ceiling

import "time"

var epoch = time.Now()

// threadCPU falls back to wall time where no per-thread CPU clock is
// read: figures then include whatever else the machine runs.
func threadCPU() time.Duration { return time.Since(epoch) }
