package inbound_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The listener's goroutines (go-smtp's, go-redis') must be gone when each
// test ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
