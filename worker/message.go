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
// To, Cc (never Bcc), Subject, Date (the time it was accepted), Message-ID,
// Importance, Disposition-Notification-To; a text/html or text/plain body;
// attachments, and inline parts for those with a Content-ID. The options
// add what the email does not say (WithTextPart).
func BuildMessage(e *queue.Email, options ...MessageOption) (*gomail.Msg, error) {
	var o messageOptions
	for _, opt := range options {
		opt(&o)
	}
	m := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	m.FromMailAddress(mailAddr(e.From))
	if len(e.To) > 0 {
		m.ToMailAddress(mailAddrs(e.To)...)
	}
	if len(e.Cc) > 0 {
		m.CcMailAddress(mailAddrs(e.Cc)...)
	}
	m.Subject(e.Subject)
	m.SetMessageIDWithValue(MessageID(e))
	m.SetDateWithValue(e.CreatedAt)
	switch e.Importance {
	case queue.ImportanceHigh:
		m.SetImportance(gomail.ImportanceHigh)
	case queue.ImportanceLow:
		m.SetImportance(gomail.ImportanceLow)
	}
	if e.ReadReceipt != "" {
		if err := m.RequestMDNTo(e.ReadReceipt); err != nil {
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
	for i, a := range e.Attachments {
		opts := []gomail.FileOption{}
		if a.ContentType != "" {
			opts = append(opts, gomail.WithFileContentType(gomail.ContentType(a.ContentType)))
		}
		var err error
		if a.ContentID != "" {
			opts = append(opts, gomail.WithFileContentID("<"+a.ContentID+">"))
			err = m.EmbedReader(a.FileName, bytes.NewReader(a.Data), opts...)
		} else {
			err = m.AttachReader(a.FileName, bytes.NewReader(a.Data), opts...)
		}
		if err != nil {
			return nil, fmt.Errorf("attachment %d: %w", i, err)
		}
	}
	return m, nil
}

// crlf turns every line break, CRLF, CR or LF, into CRLF.
var crlf = strings.NewReplacer("\r\n", "\r\n", "\r", "\r\n", "\n", "\r\n")

func mailAddr(a queue.Address) *mail.Address { return &mail.Address{Name: a.Name, Address: a.Address} }

func mailAddrs(as []queue.Address) []*mail.Address {
	out := make([]*mail.Address, len(as))
	for i, a := range as {
		out[i] = mailAddr(a)
	}
	return out
}
