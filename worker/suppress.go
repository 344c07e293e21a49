package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/metrics"
	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/suppression"
	"github.com/sendq/sendq/token"
)

// RefHeader carries an email's bounce reference in the message itself, for
// relays that rewrite the envelope sender: the reference comes back in the
// returned headers of a report.
const RefHeader = "X-Sendq-Ref"

// suppressed takes out of pending the recipients that must not be sent
// to: those the intake found on the suppression list, and those on it now
// (checked just before RCPT). It returns the rest and a suppressed result
// for each one taken out. An error (Redis) aborts the attempt: sendq does
// not send to an address it could not check.
func (w *Worker) suppressed(ctx context.Context, e *queue.Email, pending []string, now time.Time) ([]string, map[string]queue.RecipientResult, error) {
	out := map[string]queue.RecipientResult{}
	if len(e.Suppressed) > 0 {
		rest := pending[:0:0]
		for _, r := range pending {
			if why, ok := e.SuppressedReason(r); ok {
				out[r] = suppressedResult(why, now)
				continue
			}
			rest = append(rest, r)
		}
		pending = rest
	}
	if w.cfg.Suppression == nil || len(pending) == 0 {
		return pending, out, nil
	}
	found, err := w.cfg.Suppression.Check(ctx, pending)
	if err != nil {
		return nil, nil, err
	}
	if len(found) == 0 {
		return pending, out, nil
	}
	rest := make([]string, 0, len(pending)-len(found))
	for _, r := range pending {
		if en, ok := found[r]; ok {
			out[r] = suppressedResult(en.Reason, now)
			w.m.RecipientsSuppressed.WithLabelValues(metrics.StageDelivery).Inc()
			continue
		}
		rest = append(rest, r)
	}
	return rest, out, nil
}

func suppressedResult(reason string, now time.Time) queue.RecipientResult {
	return queue.RecipientResult{Status: queue.RecipientSuppressed, Reason: reason, UpdatedAt: now,
		Reply: queue.Reply{Message: "suppressed: " + reason}}
}

// afterSave runs once the attempt's results are recorded: a permanent
// failure that says the address does not exist puts it on the suppression
// list, and the notifier hears of every recipient suppressed now. Neither
// undoes the recorded outcome when it fails: it is logged.
func (w *Worker) afterSave(ctx context.Context, e *queue.Email, results map[string]queue.RecipientResult) {
	ctx = context.WithoutCancel(ctx)
	for _, r := range e.Recipients() {
		res, ok := results[r]
		if !ok {
			continue
		}
		switch {
		case res.Status == queue.RecipientSuppressed:
			w.notify(ctx, suppression.Notice{Type: suppression.NoticeSuppressed, EmailID: e.ID, Recipient: r,
				Message: res.Reply.Message})
		case res.Status == queue.RecipientFailed && w.cfg.Suppression != nil &&
			suppression.HardBounce(res.Reply.Code, res.Reply.EnhancedCode):
			added, err := w.cfg.Suppression.Add(ctx, suppression.Entry{Address: r, Reason: suppression.ReasonHardBounce,
				EmailID: e.ID, Code: res.Reply.Code, EnhancedCode: res.Reply.EnhancedCode})
			if err != nil {
				w.log.Warn("suppress hard bounce", "email_id", e.ID, "err", err)
				continue
			}
			if added {
				w.m.SuppressionsAdded.WithLabelValues(suppression.ReasonHardBounce).Inc()
			}
		}
	}
}

func (w *Worker) notify(ctx context.Context, n suppression.Notice) {
	if w.cfg.Notifier == nil {
		return
	}
	if err := w.cfg.Notifier.Notify(ctx, n); err != nil {
		w.log.Warn("notify", "type", n.Type, "email_id", n.EmailID, "err", err)
	}
}

// references adds what the email carries back to sendq: with a bounce
// domain, its reference in the envelope sender and in RefHeader; with
// ListUnsubscribe, the RFC 8058 headers. It returns the envelope sender.
// A DeliveryReceipt address stays the envelope sender: the caller asked
// for the reports to go there.
func (w *Worker) references(e *queue.Email) (string, []MessageOption, error) {
	from := e.EnvelopeFrom()
	var opts []MessageOption
	if w.cfg.BounceDomain != "" && e.ReturnPath == "" {
		tok, err := w.cfg.Signer.Bounce(e.ID)
		if err != nil {
			// An id that is no UUID (not one sendq made): no reference
			// fits a local part; the reports go to From as before.
			w.log.Debug("no bounce reference", "email_id", e.ID, "err", err)
		} else {
			from = token.BounceAddress(tok, w.cfg.BounceDomain)
			opts = append(opts, withHeader(gomail.Header(RefHeader), tok))
		}
	}
	if e.ListUnsubscribe {
		rcpts := e.Recipients()
		if w.cfg.Signer == nil || w.cfg.PublicURL == "" || len(rcpts) != 1 {
			return "", nil, errors.New("ListUnsubscribe needs SENDQ_PUBLIC_URL and SENDQ_SIGNING_KEY on the worker, and one recipient")
		}
		u := strings.TrimRight(w.cfg.PublicURL, "/") + "/v1/unsubscribe/" + w.cfg.Signer.Unsubscribe(e.ID, rcpts[0])
		opts = append(opts, withHeader(gomail.HeaderListUnsubscribe, "<"+u+">"),
			withHeader(gomail.HeaderListUnsubscribePost, "List-Unsubscribe=One-Click"))
	}
	return from, opts, nil
}

// validateReferences checks the settings references need.
func (c *Config) validateReferences() error {
	if c.BounceDomain != "" && c.Signer == nil {
		return fmt.Errorf("a bounce domain needs a signing key")
	}
	return nil
}
