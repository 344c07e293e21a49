// Package chaos is sendq's fault-injection suite: it proves, by breaking
// things on purpose, that a 202 from the API is a promise kept.
//
// Run it with the chaos build tag (the tests are not part of `go test
// ./...`):
//
//	go test -tags chaos -count=1 -v -timeout 20m ./internal/chaos/
//	CHAOS_SHORT=1 go test -tags chaos -count=1 -v ./internal/chaos/   # bounded form, for CI
//	CHAOS_REPORT=chaos.md go test -tags chaos -count=1 ./internal/chaos/  # also write the table to a file
//
// It needs redis-server on the PATH. TestMain builds the sendq binary once;
// each scenario then runs real processes on loopback: a private
// redis-server (internal/redistest), `sendq api` and two or more `sendq
// worker` (internal/proctest), and an in-process scriptable SMTP server
// (internal/smtptest).
//
// A ledger records every 202 (the id in its body), every message the SMTP
// server accepted (by its Message-ID, <ID@domain>) and every email the
// status API reports failed. After each scenario the suite drains (waits,
// bounded, until every accepted email is sent or failed) and prints one row:
// accepted, delivered, failed, lost (accepted and neither delivered nor
// failed) and duplicates (copies of an email beyond the first). The 503s the
// load generator got are counted apart: they were never accepted.
//
// The scenarios: a worker killed with SIGKILL mid-run, and in the middle
// of a 2,000-email batch; workers stopped with SIGTERM under load; Redis
// killed and restarted with AOF appendfsync always, under single sends and
// under batches retried with their Idempotency-Key; Redis frozen with SIGSTOP for 10 s; Redis out of memory
// (maxmemory, noeviction); SMTP faults (421 and close, 451 for a while, 550
// for some recipients, a connection dropped after the final dot, the server
// down for a while, the server restarted under an idle pool); and a negative
// control, Redis without persistence restarted with a backlog, where the
// ledger must report lost > 0: a checker that cannot fail proves nothing.
//
// Every scenario but the negative control fails on lost > 0. Duplicates fail
// the scenarios that promise none (SIGTERM, Redis paused, the SMTP faults
// that cannot produce one) and are counted and explained where the protocol
// allows them (a kill between the server's 250 and the sent record, a
// connection lost after the final dot).
//
// CHAOS_SHORT=1 (or -short) uses smaller volumes and shorter outages, so the
// suite runs in a few minutes on two cores; the full form takes longer.
// CHAOS_LOGS=dir keeps every process' log there.
package chaos
