// Package inbound is sendq's bounce listener: an SMTP server
// (emersion/go-smtp) for the bounce domain (SENDQ_BOUNCE_DOMAIN), the
// domain of the envelope sender b+TOKEN@domain that the worker gives every
// email. It accepts RCPT only for a valid, signed token (anything else is
// 550 5.1.1), caps the message size, and reads RFC 3464 delivery status
// reports and RFC 5965 complaint reports:
//
//   - Action: failed with a 5.x.x status: the recipient, recorded as sent,
//     becomes bounced in the email's record with the status and the
//     diagnostic; an address that does not exist (suppression.HardBounce)
//     is suppressed; the notifier hears email.bounced.
//   - Action: delayed: email.deferred. delivered (relayed, expanded):
//     email.delivered.
//   - A complaint: the address is suppressed (reason complaint) and the
//     notifier hears email.complained.
//
// A report about a recipient the email did not have (or never sent to), a
// forged or mismatched reference, or a message that is no readable report
// changes nothing: it is answered 250 (so the sender does not retry it)
// and counted in sendq_inbound_rejected_total or sendq_inbound_reports_total.
// Only a Redis failure is answered 451, so the report comes again.
package inbound
