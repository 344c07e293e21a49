package worker

import (
	"bytes"
	"fmt"
	"net/mail"
	"strings"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"

	"github.com/sendq/sendq/queue"
)

// MessageID is the Message-ID of email e, without angle brackets. It is
// derived from the email id, so every attempt of the same email carries the
// same one and a receiver can drop a duplicate. An internationalised
// (non-ASCII) From domain is not used: go-mail would RFC 2047-encode it into
// something that is no msg-id.
func MessageID(e *queue.Email) string {
	domain := "sendq.invalid"
	if i := strings.LastIndexByte(e.From.Address, '@'); i >= 0 && i < len(e.From.Address)-1 &&
		!strings.ContainsFunc(e.From.Address[i+1:], func(r rune) bool { return r >= utf8.RuneSelf }) {
		domain = e.From.Address[i+1:]
	}
	return e.ID + "@" + domain
}

// BuildMessage turns a queued email into a go-mail message: headers From,
// To, Cc (never Bcc), Subject, Date, Message-ID, Importance with its
// Priority headers, Disposition-Notification-To; a text/html or text/plain
// body; attachments, and inline parts for those with a Content-ID. The
// options add what the email does not say (WithTextPart).
//
// Date is SendAt for a scheduled email (else the time it was accepted): the
// same on every attempt. Domains are written in ASCII (IDNA); a non-ASCII
// local part stays UTF-8 (RFC 6532), which the relay must carry with
// SMTPUTF8.
func BuildMessage(e *queue.Email, options ...MessageOption) (*gomail.Msg, error) {
	var o messageOptions
	for _, opt := range options {
		opt(&o)
	}
	m := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	from, err := headerAddrs("From", []queue.Address{e.From})
	if err != nil {
		return nil, err
	}
	m.FromMailAddress(from[0])
	if len(e.To) > 0 {
		to, err := headerAddrs("To", e.To)
		if err != nil {
			return nil, err
		}
		m.ToMailAddress(to...)
	}
	if len(e.Cc) > 0 {
		cc, err := headerAddrs("Cc", e.Cc)
		if err != nil {
			return nil, err
		}
		m.CcMailAddress(cc...)
	}
	m.SetGenHeaderPreformatted(gomail.HeaderSubject, subjectValue(e.Subject))
	m.SetMessageIDWithValue(MessageID(e))
	date := e.CreatedAt
	if e.SendAt.After(date) {
		date = e.SendAt
	}
	m.SetDateWithValue(date)
	// The values each header's readers know: Importance (RFC 2156),
	// Priority (RFC 2156: urgent, normal, non-urgent), X-Priority (1 to
	// 5) and Outlook's X-MSMail-Priority (High, Normal, Low).
	switch e.Importance {
	case queue.ImportanceHigh:
		m.SetGenHeader(gomail.HeaderImportance, "high")
		m.SetGenHeader(gomail.HeaderPriority, "urgent")
		m.SetGenHeader(gomail.HeaderXPriority, "1")
		m.SetGenHeader(gomail.HeaderXMSMailPriority, "High")
	case queue.ImportanceLow:
		m.SetGenHeader(gomail.HeaderImportance, "low")
		m.SetGenHeader(gomail.HeaderPriority, "non-urgent")
		m.SetGenHeader(gomail.HeaderXPriority, "5")
		m.SetGenHeader(gomail.HeaderXMSMailPriority, "Low")
	}
	if e.ReadReceipt != "" {
		rr, err := queue.ASCIIAddress(e.ReadReceipt)
		if err != nil {
			return nil, fmt.Errorf("read receipt: %w", err)
		}
		if err := m.RequestMDNTo(rr); err != nil {
			return nil, fmt.Errorf("read receipt: %w", err)
		}
	}
	ct := gomail.TypeTextPlain
	if e.IsHTML {
		ct = gomail.TypeTextHTML
	}
	// Quoted-printable writes every line break as CRLF anyway; doing it
	// first avoids a mime/quotedprintable bug that drops the LF of
	// "\r<encoded bytes>\n" ("\r둘째\n" becomes "\r\n둘째").
	if text, ok := o.textPart(e); ok {
		// multipart/alternative, plain first: a reader shows the last
		// part it can, so HTML where it can.
		m.SetBodyString(gomail.TypeTextPlain, crlf.Replace(text))
		m.AddAlternativeString(gomail.TypeTextHTML, crlf.Replace(e.Body))
	} else {
		m.SetBodyString(ct, crlf.Replace(e.Body))
	}
	for _, h := range o.headers {
		m.SetGenHeaderPreformatted(h.name, h.value)
	}
	for i, a := range e.Attachments {
		var err error
		if a.ContentID != "" {
			err = m.EmbedReader(a.FileName, bytes.NewReader(a.Data), partHeader(a, "inline"),
				gomail.WithFileContentID("<"+a.ContentID+">"))
		} else {
			err = m.AttachReader(a.FileName, bytes.NewReader(a.Data), partHeader(a, "attachment"))
		}
		if err != nil {
			return nil, fmt.Errorf("attachment %d: %w", i, err)
		}
	}
	return m, nil
}

// crlf turns every line break, CRLF, CR or LF, into CRLF.
var crlf = strings.NewReplacer("\r\n", "\r\n", "\r", "\r\n", "\n", "\r\n")

// headerAddrs returns the addresses of a header with their domains in
// ASCII.
func headerAddrs(field string, as []queue.Address) ([]*mail.Address, error) {
	out := make([]*mail.Address, len(as))
	for i, a := range as {
		addr, err := queue.ASCIIAddress(a.Address)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		out[i] = &mail.Address{Name: a.Name, Address: addr}
	}
	return out, nil
}
