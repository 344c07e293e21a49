package main

import (
	"context"
	"time"

	"github.com/sendq/sendq/events"
	"github.com/sendq/sendq/suppression"
)

// noticeEvents turns the notices of the suppression list, the inbound
// listener and the unsubscribe endpoint into events of their emails: stored
// with the email's other events, in the event log, and handed to webhook
// delivery like every other event.
type noticeEvents struct{ log *events.Log }

// noticeStatus is the recipient status each notice reports.
var noticeStatus = map[string]string{
	suppression.NoticeSuppressed:   "suppressed",
	suppression.NoticeBounced:      "bounced",
	suppression.NoticeDeferred:     "deferred",
	suppression.NoticeDelivered:    "delivered",
	suppression.NoticeComplained:   "complained",
	suppression.NoticeUnsubscribed: "unsubscribed",
}

// Notify emits n as an event.
func (ne noticeEvents) Notify(ctx context.Context, n suppression.Notice) error {
	ev := events.New(n.Type, time.Now(), events.Data{EmailID: n.EmailID, Recipient: n.Recipient,
		Status: noticeStatus[n.Type], Code: n.Code, EnhancedCode: n.EnhancedCode, Message: n.Message})
	return ne.log.Emit(ctx, n.EmailID, ev)
}
