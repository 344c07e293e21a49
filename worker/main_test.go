package worker_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine the worker starts (asynq's, the pool sweeper, go-redis')
// must be gone when its test ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
