package queue_test

import (
	"strings"
	"testing"

	"github.com/sendq/sendq/queue"
)

func TestASCIIAddress(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"user@example.com", "user@example.com", false},
		{"User@Example.COM", "User@Example.COM", false}, // ASCII: as given
		{"user@bücher.example", "user@xn--bcher-kva.example", false},
		{"user@BÜCHER.example", "user@xn--bcher-kva.example", false},
		{"user@mail.도메인.한국", "user@mail.xn--hq1bm8jm9l.xn--3e0b707e", false},
		{"김민준@contoso.example", "김민준@contoso.example", false}, // the local part stays
		{"김민준@예시.한국", "김민준@xn--vv4b11d.xn--3e0b707e", false},
		{"user@\u0301a.example", "", true},                         // starts with a combining mark
		{"user@aא.example", "", true},                              // breaks the bidi rule
		{"user@a\u200db.example", "", true},                        // a joiner out of context
		{"user@" + strings.Repeat("ü", 60) + ".example", "", true}, // over 63 octets as an A-label
	}
	for _, tt := range tests {
		got, err := queue.ASCIIAddress(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ASCIIAddress(%q) = %q, %v; want %q (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
