package worker_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/sendq/sendq/queue"
	"github.com/sendq/sendq/worker"
)

// spamExpected are the SpamAssassin rules that fire on sendq's messages in
// this test, and why none of them is about the message's structure
// (README: "What SpamAssassin says"). Any other rule failing the test is
// a regression.
var spamExpected = map[string]string{
	// The message went from the worker straight to the test server: no
	// relay added a Received line, as a real one does (informational, no
	// points).
	"NO_RECEIVED": "no Received header: delivered straight to the test server",
	"NO_RELAYS":   "no relay on the way: delivered straight to the test server",
	// Informational, no points: the message has an HTML part.
	"HTML_MESSAGE": "the message has an HTML part",
	// About the content, not the structure: an HTML body with an image
	// and only 800-1200 bytes of words (1.4 points; from 04 to 32 as the
	// words go from under 400 to 3200 bytes). It fires on the inline
	// image kind only.
	"HTML_IMAGE_ONLY_12": "the inline-image message has an image and 800-1200 bytes of words",
}

// spamStructural are rules about how a message is built that must never
// fire; the negative control shows the test sees them.
var spamStructural = []string{"MIME_HTML_ONLY", "MIME_HTML_MOSTLY", "MISSING_DATE", "MISSING_MID",
	"MISSING_HEADERS", "MISSING_SUBJECT", "MISSING_FROM", "MPART_ALT_DIFF", "MPART_ALT_DIFF_COUNT",
	"DATE_IN_FUTURE_03_06", "DATE_IN_FUTURE_06_12", "DATE_IN_FUTURE_12_24", "DATE_IN_FUTURE_24_48",
	"DATE_IN_FUTURE_48_96", "DATE_IN_FUTURE_96_Q", "DATE_IN_PAST_03_06", "DATE_IN_PAST_06_12",
	"DATE_IN_PAST_12_24", "DATE_IN_PAST_24_48", "DATE_IN_PAST_96_XX", "INVALID_DATE", "INVALID_MSGID",
	"MSGID_NOFQDN1", "MIME_QP_LONG_LINE", "MIME_BASE64_TEXT", "MIME_NO_TEXT", "HTML_MIME_NO_HTML_TAG",
	"MIME_HEADER_CTYPE_ONLY", "TVD_SPACE_RATIO", "FROM_EXCESS_BASE64", "MIME_BOUND_DIGITS_15",
	"SUBJ_ILLEGAL_CHARS", "PP_MIME_FAKE_ASCII_TEXT", "MIME_BAD_ISO_CHARSET", "EMPTY_MESSAGE", "NO_HEADERS_MESSAGE",
	"FSL_HELO_NON_FQDN_1", "HEADER_FROM_DIFFERENT_DOMAINS"}

// spamassassinPath returns SpamAssassin's path, or skips t when it is not
// installed (fails it when SENDQ_TEST_REQUIRE_SPAMASSASSIN is set).
func spamassassinPath(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("spamassassin")
	if err != nil {
		if os.Getenv("SENDQ_TEST_REQUIRE_SPAMASSASSIN") != "" {
			t.Fatal("spamassassin not found and SENDQ_TEST_REQUIRE_SPAMASSASSIN is set: run scripts/ensure-test-deps.sh")
		}
		t.Skip("spamassassin not installed: apt-get install spamassassin (scripts/ensure-test-deps.sh) to run this test")
	}
	return bin
}

// spamassassin returns the rules `spamassassin -t -L` (local tests only,
// no network) fires on msg, sorted, then "score=N", and its report. Its user preferences
// go to home, not to the machine's.
func spamassassin(bin, home string, msg []byte) (rules []string, report string, err error) {
	cmd := exec.Command(bin, "-t", "-L")
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.Stdin = bytes.NewReader(msg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("spamassassin: %w\n%s", err, stderr.String())
	}
	m := spamStatus.FindSubmatch(out)
	if m == nil {
		return nil, "", fmt.Errorf("spamassassin wrote no X-Spam-Status:\n%s", out)
	}
	for _, r := range strings.FieldsFunc(string(m[1]), func(c rune) bool { return c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n' }) {
		if r != "none" {
			rules = append(rules, r)
		}
	}
	sort.Strings(rules)
	_, report, _ = strings.Cut(string(out), "Content analysis details:")
	if sc := spamScore.FindSubmatch(out); sc != nil {
		rules = append(rules, "score="+string(sc[1]))
	}
	return rules, report, nil
}

var (
	spamStatus = regexp.MustCompile(`(?s)X-Spam-Status: [^\n]*?tests=(.*?)\s+autolearn=`)
	spamScore  = regexp.MustCompile(`X-Spam-Status: \w+, score=(-?[0-9.]+)`)
)

// TestSpamAssassinFindsNoStructuralFault delivers sendq's kinds of message
// (plain text; HTML; HTML with an attachment and an inline image), signed,
// through a worker and runs SpamAssassin's local rules on what the relay
// received: no rule about the message's structure fires, only those in
// spamExpected. The negative control, HTML without the text part, must
// trip MIME_HTML_ONLY.
func TestSpamAssassinFindsNoStructuralFault(t *testing.T) {
	t.Parallel()
	bin := spamassassinPath(t)
	const html = `<html><body><h1>Your order has shipped</h1>` +
		`<p>Hello Ana,</p><p>Good news: your order <b>#4711</b> left our warehouse today and should arrive on Thursday.</p>` +
		`<p>You can follow the parcel on the <a href="https://shop.contoso.example/orders/4711">order page</a>.</p>` +
		`<table><tr><td>Walking socks</td><td>2</td></tr><tr><td>Rain hat</td><td>1</td></tr></table>` +
		`<p>Your parcel travels with Northwind Logistics. The driver will ring once; if nobody answers, the parcel ` +
		`goes to the pick-up point nearest to your address, where it waits for ten days. You will get a text message ` +
		`with the opening hours of that point. If the date does not suit you, you can choose another one, or a ` +
		`neighbour who may take the parcel for you, on the order page until the evening before the delivery.</p>` +
		`<p>Returns are free for thirty days: keep the label that comes in the box, and drop the parcel at any ` +
		`Northwind point. The refund reaches your account within five working days after the parcel arrives back.</p>` +
		`<p>Thank you for shopping with Contoso.<br>The Contoso team</p></body></html>`
	const text = "Hello Ana,\r\n\r\nGood news: your order #4711 left our warehouse today and should arrive on Thursday.\r\n" +
		"You can follow the parcel on the order page: https://shop.contoso.example/orders/4711\r\n\r\n" +
		"Thank you for shopping with Contoso.\r\nThe Contoso team\r\n"
	logo := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")
	kinds := []struct {
		name string
		edit func(e *queue.Email)
	}{
		{"plain text", func(e *queue.Email) { e.IsHTML, e.Body = false, text }},
		{"HTML", func(e *queue.Email) { e.Body = html }},
		{"HTML with attachment and inline image", func(e *queue.Email) {
			e.Body = strings.Replace(html, "<h1>", `<p><img src="cid:logo" alt="Contoso" width="120" height="40"></p><h1>`, 1)
			e.Attachments = []queue.Attachment{
				{FileName: "invoice-4711.pdf", ContentType: "application/pdf", Data: []byte("%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")},
				{FileName: "logo.png", ContentType: "image/png", ContentID: "logo", Data: logo},
			}
		}},
	}
	b, _, _ := dkimSetup(t, setupOpts{})
	control := setup(t, setupOpts{cfg: func(c *worker.Config) { c.NoTextPart = true }})
	send := func(b *testBundle, edit func(*queue.Email)) []byte {
		e := signedEmail("ana.lopez@fabrikam.example")
		e.Subject = "Your Contoso order #4711 has shipped"
		e.Cc = nil
		e.Attachments = nil
		edit(e)
		b.enqueue(t, e, 3)
		if st := b.waitFinal(t, e.ID); st.Status != queue.StatusSent {
			t.Fatalf("status %s: %s", st.Status, st.LastError)
		}
		for _, m := range b.smtp.Messages() {
			if bytes.Contains(m.Data, []byte(e.ID)) {
				return m.Data
			}
		}
		t.Fatalf("email %s not received", e.ID)
		return nil
	}
	type result struct {
		rules  []string
		report string
		err    error
	}
	msgs := map[string][]byte{}
	for _, k := range kinds {
		msgs[k.name] = send(b, k.edit)
	}
	const ctl = "control: HTML without the text part"
	msgs[ctl] = send(control, kinds[1].edit)
	// One SpamAssassin per message, about 1.5 s of CPU each, in parallel.
	var mu sync.Mutex
	got := map[string]result{}
	var wg sync.WaitGroup
	home := t.TempDir()
	for name, msg := range msgs {
		wg.Go(func() {
			rules, report, err := spamassassin(bin, home, msg)
			mu.Lock()
			got[name] = result{rules, report, err}
			mu.Unlock()
		})
	}
	wg.Wait()
	for name, r := range got {
		if r.err != nil {
			t.Fatalf("%s: %v", name, r.err)
		}
	}

	for _, k := range kinds {
		r := got[k.name]
		var unexpected []string
		for _, rule := range r.rules {
			if _, ok := spamExpected[rule]; !ok && !strings.HasPrefix(rule, "score=") {
				unexpected = append(unexpected, rule)
			}
		}
		t.Logf("%s: %v", k.name, r.rules)
		if len(unexpected) > 0 {
			t.Errorf("%s: SpamAssassin fired %v beyond the expected ones:%s", k.name, unexpected, r.report)
		}
		for _, rule := range r.rules {
			if slices.Contains(spamStructural, rule) {
				t.Errorf("%s: structural rule %s fired", k.name, rule)
			}
		}
	}
	t.Logf("%s: %v", ctl, got[ctl].rules)
	if r := got[ctl]; !slices.Contains(r.rules, "MIME_HTML_ONLY") {
		t.Errorf("control: HTML-only message fired %v; want MIME_HTML_ONLY among them (is SpamAssassin looking?)%s", r.rules, r.report)
	}
}
