package tptoken

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// Progress of long commands (caddy tptoken import, rebuild): one status line
// on a terminal, redrawn in place at most 4 times a second and cleared before
// the result table; nothing when standard error is not a terminal or with
// --json, so scripts and logs get the final output only.
//
//	rebuild tt00component: 37/120 (31%) · 2 failed · 1.9/s · 44s left

// rateMeter estimates items done per second: the average since the start
// for the first 10 seconds, then a moving average that forgets over about
// 10 seconds, so a stall or a burst shows within seconds.
type rateMeter struct {
	start, last         time.Time
	startDone, lastDone int
	rate                float64
}

const rateWindow = 10 * time.Second

func (m *rateMeter) observe(done int, now time.Time) {
	if m.start.IsZero() {
		m.start, m.last, m.startDone, m.lastDone = now, now, done, done
		return
	}
	dt := now.Sub(m.last)
	if dt < 250*time.Millisecond {
		return
	}
	if since := now.Sub(m.start); since <= rateWindow {
		m.rate = float64(done-m.startDone) / since.Seconds()
	} else {
		inst := float64(done-m.lastDone) / dt.Seconds()
		m.rate += (1 - math.Exp(-dt.Seconds()/rateWindow.Seconds())) * (inst - m.rate)
	}
	m.last, m.lastDone = now, done
}

// perSecond is the estimate (0 before a quarter second has passed).
func (m *rateMeter) perSecond() float64 { return m.rate }

// eta is the time left for remaining items at the estimated rate (0: unknown).
func (m *rateMeter) eta(remaining int) time.Duration {
	if m.rate <= 0 || remaining <= 0 {
		return 0
	}
	return time.Duration(float64(remaining) / m.rate * float64(time.Second))
}

// progressLine draws the status line of one command.
type progressLine struct {
	w     io.Writer
	on    bool // w is a terminal and the output is not JSON
	width int
	label string
	now   func() time.Time
	meter rateMeter
	drawn time.Time
	shown bool

	done, total, failed int
}

// newProgress is the status line for label on w (standard error), drawn
// only when w is a terminal and jsonOut is off.
func newProgress(w io.Writer, jsonOut bool, label string) *progressLine {
	width, tty := terminalWidth(w)
	return &progressLine{w: w, on: tty && !jsonOut, width: width, label: label, now: time.Now}
}

// terminalWidth reports whether w is a terminal, and its width.
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	width, _, err := term.GetSize(int(f.Fd()))
	if err != nil || width <= 0 {
		width = 80
	}
	return width, true
}

// update records the counts and redraws the line (at most 4 Hz; always
// when done reaches total).
func (p *progressLine) update(done, total, failed int) {
	p.done, p.total, p.failed = done, total, failed
	now := p.now()
	p.meter.observe(done, now)
	if !p.on || (now.Sub(p.drawn) < 250*time.Millisecond && done != total) {
		return
	}
	p.drawn, p.shown = now, true
	line := p.text()
	if r := []rune(line); p.width > 1 && len(r) > p.width-1 {
		line = string(r[:p.width-1])
	}
	fmt.Fprint(p.w, "\r"+line+"\x1b[K")
}

// clear erases the line, before the table is printed.
func (p *progressLine) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

func (p *progressLine) text() string {
	parts := []string{}
	if p.total > 0 {
		parts = append(parts, fmt.Sprintf("%s: %d/%d (%d%%)", p.label, p.done, p.total, p.done*100/p.total))
	} else {
		parts = append(parts, fmt.Sprintf("%s: %d", p.label, p.done))
	}
	if p.failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", p.failed))
	}
	if r := p.meter.perSecond(); r > 0 {
		parts = append(parts, fmt.Sprintf("%.1f/s", r))
		if left := p.meter.eta(p.total - p.done); left > 0 {
			parts = append(parts, shortDuration(left)+" left")
		}
	}
	return strings.Join(parts, " · ")
}
