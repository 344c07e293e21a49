//go:build !unix

package dkimtest

import "time"

// CPUTime is unknown here: the benchmarks report 0.
func CPUTime() time.Duration { return 0 }
