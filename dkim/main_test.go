package dkim_test

import (
	"testing"

	"go.uber.org/goleak"
)

// go-msgauth signs and verifies on goroutines of its own: none may outlive
// a Sign.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
