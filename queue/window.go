package queue

import "time"

// WindowStart is when the email's delivery window opens: its SendAt when
// it has one, else when it was accepted. The worker fails an email that is
// not delivered within SENDQ_MAX_AGE of it (reason expired), so a
// scheduled email gets the whole window after its SendAt, however far
// ahead that was.
func (e *Email) WindowStart() time.Time {
	if !e.SendAt.IsZero() {
		return e.SendAt
	}
	return e.CreatedAt
}
