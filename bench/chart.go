package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"os"
)

// The chart is hand-written SVG (no plotting dependency): two grouped bar
// panels, throughput per stage (vmvault vs peers) and stored bytes per
// generation. Every number drawn is a field of the report.

var toolColor = map[string]string{
	ToolVMVault:        "#1f77b4",
	ToolVMVault + "+p": "#9ecae1",
	ToolRestic:         "#ff7f0e",
	ToolBorg:           "#2ca02c",
}

type bar struct {
	series string
	value  float64
	label  string
}

type barGroup struct {
	name string
	bars []bar
}

// WriteSVG draws the chart of the default configuration.
func (r *Report) WriteSVG(w io.Writer) error {
	tools := append([]string{ToolVMVault}, r.peerTools()...)
	var speed []barGroup
	for _, s := range r.Stages {
		if s.Tool != ToolVMVault || s.Config != "default" || s.Error != "" {
			continue
		}
		g := barGroup{name: stageLabel(s)}
		for _, t := range tools {
			ps := r.find(t, s.Stage, s.Gen)
			if t != ToolVMVault && s.Stage == StageRestoreRaw {
				ps = nil // peers have no raw restore; their VHDX restore is under restore-vhdx
			}
			if ps == nil {
				continue
			}
			g.bars = append(g.bars, bar{t, ps.MBs, fmt.Sprintf("%.0f", ps.MBs)})
		}
		speed = append(speed, g)
	}
	var stored []barGroup
	gens := map[int]*barGroup{}
	var order []int
	for _, p := range r.generations() {
		g := gens[p.gen]
		if g == nil {
			g = &barGroup{name: fmt.Sprintf("gen %d", p.gen)}
			gens[p.gen] = g
			order = append(order, p.gen)
		}
		g.bars = append(g.bars, bar{p.tool, float64(p.stored) / 1e6, mb(p.stored)})
		if p.tool == ToolVMVault && p.withParity != p.stored {
			g.bars = append(g.bars, bar{ToolVMVault + "+p", float64(p.withParity) / 1e6, mb(p.withParity)})
		}
	}
	for _, gen := range order {
		stored = append(stored, *gens[gen])
	}

	const width, panelH = 1000, 380
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		width, 2*panelH+40, width, 2*panelH+40)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", width, 2*panelH+40)
	title := "vmvault bench"
	if r.Fleet != nil {
		title = fmt.Sprintf("vmvault bench: %d VMs x %s, %d generations; %d cores %s", len(r.Fleet.VMs), fmtGiB(r.Fleet.Options.Size),
			r.Fleet.Options.Generations, r.Machine.Cores, r.Machine.CPUModel)
	}
	text(&b, 10, 18, "start", 13, title)
	legend := []string{ToolVMVault, ToolVMVault + "+p"}
	legend = append(legend, tools[1:]...)
	for i, t := range legend {
		x := 10 + i*170
		fmt.Fprintf(&b, `<rect x="%d" y="26" width="12" height="12" fill="%s"/>`+"\n", x, toolColor[t])
		name := t
		if t == ToolVMVault+"+p" {
			name = "vmvault with RS parity"
		}
		text(&b, float64(x+16), 36, "start", 11, name)
	}
	panel(&b, 0, 40, width, panelH, "throughput per stage, MB/s (allocated bytes for backups and restores; bytes read for mounts)", speed)
	panel(&b, 0, 40+panelH, width, panelH, "stored after each backup, MB", stored)
	b.WriteString("</svg>\n")
	_, err := w.Write(b.Bytes())
	if err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	return nil
}

// WriteSVGFile writes the chart to path.
func (r *Report) WriteSVGFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := r.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func text(b *bytes.Buffer, x, y float64, anchor string, size int, s string) {
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d">`, x, y, anchor, size)
	xml.EscapeText(b, []byte(s))
	b.WriteString("</text>\n")
}

// panel draws grouped bars in the box (x0, y0, w, h).
func panel(b *bytes.Buffer, x0, y0, w, h int, title string, groups []barGroup) {
	text(b, float64(x0+10), float64(y0+20), "start", 12, title)
	left, right, top, bottom := float64(x0+60), float64(x0+w-10), float64(y0+40), float64(y0+h-50)
	maxV := 0.0
	for _, g := range groups {
		for _, br := range g.bars {
			maxV = math.Max(maxV, br.value)
		}
	}
	if maxV <= 0 || len(groups) == 0 {
		text(b, (left+right)/2, (top+bottom)/2, "middle", 12, "no data")
		return
	}
	scale := niceCeil(maxV)
	// Axis and grid.
	for i := 0; i <= 4; i++ {
		v := scale * float64(i) / 4
		y := bottom - (bottom-top)*float64(i)/4
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, right, y)
		text(b, left-4, y+4, "end", 10, fmt.Sprintf("%g", v))
	}
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", left, bottom, right, bottom)
	gw := (right - left) / float64(len(groups))
	for i, g := range groups {
		gx := left + gw*float64(i)
		n := max(len(g.bars), 1)
		bw := math.Min(28, (gw-10)/float64(n))
		start := gx + (gw-bw*float64(n))/2
		for j, br := range g.bars {
			bh := (bottom - top) * br.value / scale
			x := start + bw*float64(j)
			fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>`, x, bottom-bh, bw-2, bh, toolColor[br.series])
			xml.EscapeText(b, []byte(fmt.Sprintf("%s %s: %s", br.series, g.name, br.label)))
			b.WriteString("</title></rect>\n")
			text(b, x+(bw-2)/2, bottom-bh-3, "middle", 9, br.label)
		}
		text(b, gx+gw/2, bottom+14, "middle", 10, g.name)
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
