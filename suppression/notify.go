package suppression

import "context"

// Notice types: what happened to one recipient of one email.
const (
	NoticeSuppressed   = "email.suppressed"   // not sent: the address is on the list
	NoticeBounced      = "email.bounced"      // a failure report after the relay accepted it
	NoticeDeferred     = "email.deferred"     // a delay report: the relay is still trying
	NoticeDelivered    = "email.delivered"    // a success report (only when one was asked for)
	NoticeComplained   = "email.complained"   // the recipient reported it as spam
	NoticeUnsubscribed = "email.unsubscribed" // the recipient used the one-click link
)

// Notice is one recipient change that the product should hear about.
type Notice struct {
	Type         string // one of the Notice constants
	EmailID      string
	Recipient    string
	Code         int    // SMTP reply code, when known
	EnhancedCode string // SMTP or DSN status code (5.1.1)
	Message      string // the diagnostic, or why it was suppressed
}

// Notifier hears of recipient changes that happen outside a delivery
// attempt's SMTP replies: suppressions, asynchronous bounces and delay or
// success reports, complaints and unsubscribes. The worker, the inbound
// listener and the unsubscribe endpoint call it after the change is
// recorded; an error is logged and does not undo the change. A nil
// Notifier hears nothing.
type Notifier interface {
	Notify(ctx context.Context, n Notice) error
}
