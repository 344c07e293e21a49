package producer

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sendq/sendq/queue"
)

// The limits validate applies when Limits leaves them zero.
const (
	// DefaultMaxAttachments is the default of Limits.MaxAttachments
	// (SENDQ_MAX_ATTACHMENTS).
	DefaultMaxAttachments = 100
	// DefaultMaxSchedule is the default of Limits.MaxSchedule
	// (SENDQ_MAX_SCHEDULE): 30 days.
	DefaultMaxSchedule = 30 * 24 * time.Hour
	// DefaultMaxAge is the default of Limits.MaxAge (SENDQ_MAX_AGE), the
	// worker's own default.
	DefaultMaxAge = 72 * time.Hour
	// MaxSubjectChars bounds Subject, in characters: a long Subject is cut
	// by relays (Postfix keeps about 100 KB of a header) and shown by no
	// mail program, and RFC 5322 lines stay short when it is folded.
	MaxSubjectChars = 2000
)

// validate checks what DecodeRequest decoded against the limits that do
// not depend on the time: how many attachments, how long a Subject, which
// characters a file name may hold. DecodeRequest calls it last.
func validate(e *queue.Email, lim Limits) error {
	if lim.MaxAttachments <= 0 {
		lim.MaxAttachments = DefaultMaxAttachments
	}
	if n := len(e.Attachments); n > lim.MaxAttachments {
		return fieldErr("Attachments", "%d attachments; the limit is %d (SENDQ_MAX_ATTACHMENTS)", n, lim.MaxAttachments)
	}
	if n := utf8.RuneCountInString(e.Subject); n > MaxSubjectChars {
		return fieldErr("Subject", "is %d characters long; the limit is %d", n, MaxSubjectChars)
	}
	for i, a := range e.Attachments {
		if r, ok := bidiControl(a.FileName); ok {
			return fieldErr(fmt.Sprintf("Attachments[%d].FileName", i),
				"must not contain the bidirectional control character U+%04X: it makes a name show other than it is (invoice\\u202Efdp.exe shows as invoiceexe.pdf)", r)
		}
	}
	return nil
}

// bidiControl returns the first Unicode bidirectional formatting character
// in s: the embeddings and overrides U+202A-U+202E, the isolates
// U+2066-U+2069, the marks U+200E, U+200F and U+061C (Unicode's
// Bidi_Control property, UAX #9).
func bidiControl(s string) (rune, bool) {
	i := strings.IndexFunc(s, func(r rune) bool {
		return r >= '\u202a' && r <= '\u202e' || r >= '\u2066' && r <= '\u2069' ||
			r == '\u200e' || r == '\u200f' || r == '\u061c'
	})
	if i < 0 {
		return 0, false
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return r, true
}

// checkSendAt bounds a SendAt against now: at most lim.MaxSchedule ahead
// (an email held for years sits in Redis for good), and not so far back
// that its delivery window, lim.MaxAge from SendAt, has closed already (the
// worker would fail it as expired without trying; such a time is a mistake:
// a zero date, a wrong year). The zero time (no SendAt) passes.
func checkSendAt(sendAt, now time.Time, lim Limits) error {
	if sendAt.IsZero() {
		return nil
	}
	if lim.MaxSchedule <= 0 {
		lim.MaxSchedule = DefaultMaxSchedule
	}
	if lim.MaxAge <= 0 {
		lim.MaxAge = DefaultMaxAge
	}
	if latest := now.Add(lim.MaxSchedule); sendAt.After(latest) {
		return fieldErr("SendAt", "is more than %s ahead (SENDQ_MAX_SCHEDULE); the latest now is %s",
			days(lim.MaxSchedule), latest.UTC().Format(time.RFC3339))
	}
	if earliest := now.Add(-lim.MaxAge); sendAt.Before(earliest) {
		return fieldErr("SendAt", "is more than %s ago, so its delivery window (SENDQ_MAX_AGE from SendAt) is over; the earliest now is %s",
			days(lim.MaxAge), earliest.UTC().Format(time.RFC3339))
	}
	return nil
}

// days writes d as people read it: "30 days" for whole days, else as
// time.Duration does.
func days(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d%day == 0:
		return fmt.Sprintf("%d days", d/day)
	default:
		return d.String()
	}
}
