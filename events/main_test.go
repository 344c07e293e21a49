package events_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a Deliverer starts (asynq's, the sweeper, HTTP
// connections) must be gone when its test ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
