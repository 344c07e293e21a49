// Package worker delivers queued emails: it decodes the task written by the
// intake, builds the MIME message with go-mail (the same bytes on every
// attempt, with a text part for an HTML body), has the dkim package sign
// it, and drives the SMTP transaction itself over pooled connections so
// that every recipient is judged on its own reply. It records each
// recipient's outcome in Redis before the task is acknowledged, so a
// redelivered task never sends a second copy to a recipient the server
// already accepted.
package worker
