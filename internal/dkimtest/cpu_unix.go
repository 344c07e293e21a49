//go:build unix

package dkimtest

import (
	"syscall"
	"time"
)

// CPUTime is the user and system CPU time this process has used. The
// signing benchmarks report CPU per operation with it, which a machine
// shared with other work inflates far less than the wall time.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
