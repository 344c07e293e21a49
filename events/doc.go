// Package events owns sendq's event records, the event log, and webhook
// delivery.
//
// An event is one change of one recipient of one email (email.sent,
// email.deferred, email.failed, email.canceled, and the types other
// packages emit: bounced, delivered, complained, suppressed, unsubscribed).
// Each is stored in Redis, numbered per email (Data.Sequence), appended to
// a log of recent events of every email (GET /v1/events), and delivered to
// every endpoint of SENDQ_WEBHOOK_URLS, signed as Standard Webhooks 1.0
// says (webhook-id, webhook-timestamp, webhook-signature), at least once.
//
// # Keys
//
// EmailKey (one hash per email, the email id as hash tag, like the email's
// record), LogKey (a stream), OutboxKey (a sorted set) and DisabledKey (a
// hash). No other package spells them.
//
// # How an event survives a crash
//
// Storing and delivering are two steps, and the first is the one that
// counts:
//
//  1. Store, in the same round trip as the outcome it reports (the email's
//     record: Log.Prepare gives the commands, queue.Update.Extra carries
//     them into queue.Store.Save, before the record's own): the email goes
//     into the outbox, then its events into its hash, each marked not yet
//     handed off. Redis runs one connection's commands in order, so
//     whatever part of the round trip ran, an event that was stored is in
//     the outbox, and an outcome that was recorded has its events stored.
//     Repeating the write (the worker does after a Redis error) stores
//     nothing twice: the events keep their ids.
//  2. Hand off (Pending.Dispatch): queue one asynq task per event and
//     endpoint on the webhook queue, append the events to the log, clear
//     their marks, and take the email out of the outbox if no emitter
//     added events since.
//
// If the process dies between the two steps, or the hand-off fails, the
// sweeper (run by every Deliverer, every SweepInterval) finds the email in
// the outbox once its entry is older than SweepAfter, claims it (a
// conditional score change, so one sweeper of many takes it) and hands off
// every event still marked. A delivery task's id is the event id and the
// endpoint's key, so a second hand-off of an event whose task is still
// queued, running or finished less than five minutes ago queues nothing;
// later, or in the log, a second hand-off shows as a duplicate with the
// same id, which is what "at least once" allows.
//
// On Redis Cluster the outbox and the log are single keys on their own
// slots: the outbox entry is written in the same round trip as the events
// but not on the same connection, so the ordering above holds per node
// only, and a process killed in that instant can leave an event stored
// (and readable per email) that the sweeper does not see.
//
// # Delivery
//
// A Deliverer serves the webhook queue with its own asynq server and
// concurrency, so a backlog of email never delays events. One attempt is a
// POST with a 10 s timeout; redirects are not followed; 2xx is done; 410
// disables the endpoint in Redis for every process; anything else is
// retried on the Standard Webhooks ladder (5 s, 5 min, 30 min, 2 h, 5 h,
// 10 h, 14 h, 20 h, 24 h, ±10%), scaled by SENDQ_WEBHOOK_RETRY_BASE.
package events
