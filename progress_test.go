package tptoken

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fakeTerminal is a progress line on a terminal of the given width, with a
// clock the test moves.
func fakeTerminal(width int) (*progressLine, *bytes.Buffer, *time.Time) {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	p := &progressLine{w: &buf, on: true, width: width, label: "rebuild tt00comp", now: func() time.Time { return now }}
	return p, &buf, &now
}

// lastLine is what a terminal shows after the carriage returns and erases.
func lastLine(out string) string {
	parts := strings.Split(out, "\r")
	return strings.TrimSuffix(parts[len(parts)-1], "\x1b[K")
}

// The status line a person watches: counts, percentage, failures, rate and
// time left, redrawn in place at most 4 times a second, cut to the terminal's
// width, and erased before the table.
func TestProgressLineOnATerminal(t *testing.T) {
	p, buf, now := fakeTerminal(120)
	p.update(0, 120, 0)
	if got := lastLine(buf.String()); got != "rebuild tt00comp: 0/120 (0%)" {
		t.Fatalf("first line %q", got)
	}
	for i := 1; i <= 37; i++ { // 2 a second for 18.5 s
		*now = now.Add(500 * time.Millisecond)
		failed := 0
		if i > 30 {
			failed = 2
		}
		p.update(i, 120, failed)
	}
	got := lastLine(buf.String())
	if got != "rebuild tt00comp: 37/120 (30%) · 2 failed · 2.0/s · 42s left" {
		t.Fatalf("line %q", got)
	}
	if !strings.HasPrefix(buf.String(), "\r") || !strings.HasSuffix(buf.String(), "\x1b[K") || strings.Contains(buf.String(), "\n") {
		t.Fatalf("not redrawn in place: %q", buf.String())
	}
	// Updates closer than 250 ms are not drawn.
	draws := strings.Count(buf.String(), "\r")
	p.update(38, 120, 2)
	*now = now.Add(100 * time.Millisecond)
	p.update(39, 120, 2)
	if strings.Count(buf.String(), "\r") != draws {
		t.Fatal("redrawn faster than 4 times a second")
	}
	// The last item is drawn at once; the line is cut to the width; clear erases it.
	p.width = 30
	p.update(120, 120, 2)
	if got := lastLine(buf.String()); len([]rune(got)) != 29 || !strings.HasPrefix(got, "rebuild tt00comp: 120/120") {
		t.Fatalf("final line %q (width 30)", got)
	}
	p.clear()
	if !strings.HasSuffix(buf.String(), "\r\x1b[K") {
		t.Fatal("the line was not erased before the table")
	}
}

// A stall shows: after 10 s the rate follows the last seconds, not the
// average since the start.
func TestProgressRateFollowsTheLastSeconds(t *testing.T) {
	p, buf, now := fakeTerminal(200)
	for i := 0; i <= 40; i++ { // 4 a second for 10 s
		p.update(i, 1000, 0)
		*now = now.Add(250 * time.Millisecond)
	}
	for range 40 { // then nothing for 20 s
		*now = now.Add(500 * time.Millisecond)
		p.update(40, 1000, 0)
	}
	if r := p.meter.perSecond(); r > 0.6 {
		t.Fatalf("rate %.2f/s 20 s into a stall", r)
	}
	if !strings.Contains(lastLine(buf.String()), "40/1000 (4%)") {
		t.Fatalf("line %q", lastLine(buf.String()))
	}
}

// Not a terminal (a pipe, a file, a test buffer), or --json: nothing is drawn.
func TestProgressIsSilentWithoutATerminalOrWithJSON(t *testing.T) {
	var buf bytes.Buffer
	for _, p := range []*progressLine{newProgress(&buf, false, "import x"), newProgress(&buf, true, "import x")} {
		p.update(1, 2, 0)
		p.update(2, 2, 1)
		p.clear()
	}
	if buf.Len() != 0 {
		t.Fatalf("drawn without a terminal: %q", buf.String())
	}
	p, tty, _ := fakeTerminal(80)
	p.on = false // --json on a terminal
	p.update(1, 1, 0)
	if tty.Len() != 0 {
		t.Fatal("drawn with --json")
	}
}
