package inbound

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"regexp"
	"strconv"
	"strings"
)

// Report kinds (the report-type of a multipart/report).
const (
	KindDSN       = "delivery-status" // RFC 3464
	KindComplaint = "feedback-report" // RFC 5965 (ARF)
)

// Report is what a multipart/report says.
type Report struct {
	Kind string
	// Ref is the X-Sendq-Ref header of the returned message (or its
	// headers), if the report carries it.
	Ref string
	// Recipients are the per-recipient blocks of a delivery status
	// report.
	Recipients []RecipientReport
	// Complaint is the feedback report of an ARF complaint.
	Complaint *Complaint
}

// RecipientReport is one recipient's block of an RFC 3464 report.
type RecipientReport struct {
	FinalRecipient    string // the address, without its "rfc822;" type
	OriginalRecipient string
	Action            string // failed, delayed, delivered, relayed, expanded (lower case)
	Status            string // the DSN status code, 5.1.1
	Diagnostic        string // Diagnostic-Code without its type ("550 5.1.1 <a@b>: user unknown")
	Code              int    // the SMTP reply code at the start of an smtp diagnostic, else 0
}

// Address is the recipient the block is about: the original recipient
// (the RCPT TO sendq gave) if the report has it, else the final one.
func (r RecipientReport) Address() string {
	if r.OriginalRecipient != "" {
		return r.OriginalRecipient
	}
	return r.FinalRecipient
}

// Complaint is an RFC 5965 feedback report.
type Complaint struct {
	FeedbackType     string // abuse, fraud, virus, other, ...
	OriginalRcptTo   string // the complaining recipient, when the report names it
	OriginalMailFrom string
	ReturnedTo       []string // To of the returned message's headers, when it has them
}

// Limits on what Parse reads; past them a report is refused as a whole.
const (
	maxParts      = 16
	maxRecipients = 1000
	maxFieldLen   = 998 // RFC 5322's line limit, for the fields sendq keeps
)

// ErrNotReport is returned by Parse for a readable message that is not a
// delivery status or complaint report (an auto-reply to the bounce
// address, say).
var ErrNotReport = errors.New("not a delivery status or feedback report")

// Parse reads one message and returns its report. Anything it cannot
// read as an RFC 3464 or RFC 5965 report is an error: ErrNotReport for a
// well-formed message of another kind, another error for a malformed one.
// It reads at most what r gives (the caller caps the size).
func Parse(r io.Reader) (*Report, error) {
	msg, err := mail.ReadMessage(bufio.NewReader(r))
	if err != nil {
		return nil, fmt.Errorf("read message: %w", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		if msg.Header.Get("Content-Type") == "" {
			return nil, ErrNotReport
		}
		return nil, fmt.Errorf("content-type: %w", err)
	}
	if mt != "multipart/report" {
		return nil, ErrNotReport
	}
	rep := &Report{Kind: strings.ToLower(params["report-type"])}
	if rep.Kind != KindDSN && rep.Kind != KindComplaint {
		return nil, ErrNotReport
	}
	if params["boundary"] == "" {
		return nil, errors.New("multipart/report without a boundary")
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	sawReport := false
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read part: %w", err)
		}
		if i >= maxParts {
			return nil, fmt.Errorf("more than %d parts", maxParts)
		}
		body := decodePart(p)
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch pt {
		case "message/delivery-status", "message/global-delivery-status":
			if rep.Kind != KindDSN || sawReport {
				return nil, errors.New("unexpected delivery-status part")
			}
			sawReport = true
			if err := parseDSN(body, rep); err != nil {
				return nil, err
			}
		case "message/feedback-report":
			if rep.Kind != KindComplaint || sawReport {
				return nil, errors.New("unexpected feedback-report part")
			}
			sawReport = true
			if err := parseARF(body, rep); err != nil {
				return nil, err
			}
		case "message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global", "message/global-headers":
			if err := parseReturned(body, rep); err != nil {
				return nil, err
			}
		}
		// Whatever is left of the part is skipped by NextRawPart.
	}
	if !sawReport {
		return nil, fmt.Errorf("multipart/report (%s) without its report part", rep.Kind)
	}
	if rep.Kind == KindComplaint && rep.Complaint.OriginalRcptTo == "" && len(rep.Complaint.ReturnedTo) == 1 {
		rep.Complaint.OriginalRcptTo = rep.Complaint.ReturnedTo[0]
	}
	return rep, nil
}

// decodePart undoes a part's Content-Transfer-Encoding (base64 or
// quoted-printable; 7bit, 8bit and binary are as they are).
func decodePart(p *multipart.Part) io.Reader {
	switch strings.ToLower(strings.TrimSpace(p.Header.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, &stripSpace{r: p})
	case "quoted-printable":
		return quotedprintable.NewReader(p)
	}
	return p
}

// stripSpace drops the line breaks and spaces of a base64 body.
type stripSpace struct{ r io.Reader }

func (s *stripSpace) Read(b []byte) (int, error) {
	for {
		n, err := s.r.Read(b)
		j := 0
		for _, c := range b[:n] {
			if c != '\r' && c != '\n' && c != ' ' && c != '\t' {
				b[j] = c
				j++
			}
		}
		if j > 0 || err != nil {
			return j, err
		}
	}
}

// parseDSN reads the per-message block and the per-recipient blocks of a
// message/delivery-status body.
func parseDSN(body io.Reader, rep *Report) error {
	tp := textproto.NewReader(bufio.NewReader(body))
	for {
		// The first block holds the per-message fields (Reporting-MTA,
		// Arrival-Date): no Final-Recipient, no Action. Each further one
		// is a recipient's.
		h, err := tp.ReadMIMEHeader()
		if h.Get("Final-Recipient") != "" || h.Get("Action") != "" {
			rr, perr := recipientBlock(h)
			if perr != nil {
				return perr
			}
			if len(rep.Recipients) >= maxRecipients {
				return fmt.Errorf("more than %d recipients", maxRecipients)
			}
			rep.Recipients = append(rep.Recipients, rr)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("delivery-status: %w", err)
		}
	}
	if len(rep.Recipients) == 0 {
		return errors.New("delivery-status without a recipient")
	}
	return nil
}

var statusRe = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

func recipientBlock(h textproto.MIMEHeader) (RecipientReport, error) {
	var rr RecipientReport
	var err error
	if rr.FinalRecipient, err = typedAddress(h.Get("Final-Recipient")); err != nil || rr.FinalRecipient == "" {
		return rr, fmt.Errorf("final-recipient: %q", clip(h.Get("Final-Recipient")))
	}
	if v := h.Get("Original-Recipient"); v != "" {
		if rr.OriginalRecipient, err = typedAddress(v); err != nil {
			return rr, fmt.Errorf("original-recipient: %q", clip(v))
		}
	}
	rr.Action = strings.ToLower(strings.TrimSpace(h.Get("Action")))
	switch rr.Action {
	case "failed", "delayed", "delivered", "relayed", "expanded":
	default:
		return rr, fmt.Errorf("action %q", clip(rr.Action))
	}
	// Status may carry a comment: "5.1.1 (bad mailbox)".
	st := strings.TrimSpace(h.Get("Status"))
	if i := strings.IndexAny(st, " \t("); i >= 0 {
		st = st[:i]
	}
	if !statusRe.MatchString(st) {
		return rr, fmt.Errorf("status %q", clip(h.Get("Status")))
	}
	rr.Status = st
	if d := h.Get("Diagnostic-Code"); d != "" {
		typ, text, _ := strings.Cut(d, ";")
		rr.Diagnostic = clip(strings.Join(strings.Fields(text), " "))
		if strings.EqualFold(strings.TrimSpace(typ), "smtp") && len(rr.Diagnostic) >= 3 {
			if n, err := strconv.Atoi(rr.Diagnostic[:3]); err == nil && n >= 200 && n < 600 &&
				(len(rr.Diagnostic) == 3 || rr.Diagnostic[3] == ' ' || rr.Diagnostic[3] == '-') {
				rr.Code = n
			}
		}
	}
	return rr, nil
}

// typedAddress reads "rfc822; user@example.com" (the address type is
// required by RFC 3464; utf-8 addresses of RFC 6533 are taken as they
// are). Only rfc822 and utf-8 addresses are kept: another type names no
// address sendq sent to.
func typedAddress(v string) (string, error) {
	typ, addr, ok := strings.Cut(v, ";")
	if !ok {
		return "", errors.New("no address type")
	}
	switch strings.ToLower(strings.TrimSpace(typ)) {
	case "rfc822", "utf-8":
	default:
		return "", nil
	}
	addr = strings.TrimSpace(addr)
	if strings.HasPrefix(addr, "<") != strings.HasSuffix(addr, ">") {
		return "", errors.New("unbalanced angle brackets")
	}
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "<"), ">")
	if len(addr) > 254 || strings.ContainsAny(addr, " \t\r\n<>,;") || strings.Count(addr, "@") != 1 {
		return "", errors.New("not an address")
	}
	return addr, nil
}

func parseARF(body io.Reader, rep *Report) error {
	h, err := textproto.NewReader(bufio.NewReader(body)).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("feedback-report: %w", err)
	}
	c := &Complaint{FeedbackType: strings.ToLower(strings.TrimSpace(h.Get("Feedback-Type")))}
	if c.FeedbackType == "" {
		return errors.New("feedback-report without Feedback-Type")
	}
	if v := h.Get("Original-Rcpt-To"); v != "" {
		a, err := mail.ParseAddress(v)
		if err != nil {
			return fmt.Errorf("original-rcpt-to: %q", clip(v))
		}
		c.OriginalRcptTo = a.Address
	}
	c.OriginalMailFrom = clip(strings.TrimSpace(h.Get("Original-Mail-From")))
	rep.Complaint = c
	return nil
}

// parseReturned reads the headers of the returned message: the reference
// sendq put in it, and (for a complaint) its To.
func parseReturned(body io.Reader, rep *Report) error {
	h, err := textproto.NewReader(bufio.NewReader(body)).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("returned message headers: %w", err)
	}
	if refs := h.Values("X-Sendq-Ref"); len(refs) > 0 {
		if len(refs) > 1 || (rep.Ref != "" && rep.Ref != strings.TrimSpace(refs[0])) {
			return errors.New("more than one X-Sendq-Ref")
		}
		rep.Ref = clip(strings.TrimSpace(refs[0]))
	}
	if rep.Kind == KindComplaint {
		if to := h.Get("To"); to != "" {
			if list, err := mail.ParseAddressList(to); err == nil {
				for _, a := range list {
					rep.Complaint.appendTo(a.Address)
				}
			}
		}
	}
	return nil
}

func (c *Complaint) appendTo(a string) {
	if c != nil && len(c.ReturnedTo) < maxRecipients {
		c.ReturnedTo = append(c.ReturnedTo, a)
	}
}

func clip(s string) string {
	if len(s) > maxFieldLen {
		return s[:maxFieldLen]
	}
	return s
}
