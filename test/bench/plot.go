package main

import (
	"fmt"
	"os"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// series is one cache's cold pulls by number of concurrent clients.
type series struct {
	name  string
	byCli map[int]measure
}

// writePlot draws upstream bytes ÷ size and wall time against
// concurrent clients, one line per cache, side by side in one PNG.
func writePlot(path, title string, all []series) error {
	panel := func(ylabel string, value func(measure) float64) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = ylabel
		p.X.Label.Text = "concurrent clients (cold cache)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(clientTicks())
		p.Y.Min = 0
		p.Legend.Top, p.Legend.Left = true, true
		var args []any
		for _, s := range all {
			var pts plotter.XYs
			var clients []int
			for c := range s.byCli {
				clients = append(clients, c)
			}
			sort.Ints(clients)
			for _, c := range clients {
				pts = append(pts, plotter.XY{X: float64(c), Y: value(s.byCli[c])})
			}
			args = append(args, s.name, pts)
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return nil, err
		}
		return p, nil
	}
	bytes, err := panel("upstream bytes ÷ image size", func(m measure) float64 { return m.upstream })
	if err != nil {
		return err
	}
	wall, err := panel("wall time (s), all clients done", func(m measure) float64 { return m.wall.Seconds() })
	if err != nil {
		return err
	}
	img := vgimg.New(vg.Points(900), vg.Points(380))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(24), PadTop: vg.Points(50), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	plots := [][]*plot.Plot{{bytes, wall}}
	canvases := plot.Align(plots, tiles, dc)
	bytes.Draw(canvases[0][0])
	wall.Draw(canvases[0][1])
	heading := bytes.Title.TextStyle
	heading.XAlign = draw.XCenter
	dc.FillText(heading, vg.Point{X: vg.Points(450), Y: vg.Points(358)}, title)
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func clientTicks() []plot.Tick {
	var ticks []plot.Tick
	for _, c := range plotClients {
		ticks = append(ticks, plot.Tick{Value: float64(c), Label: fmt.Sprint(c)})
	}
	return ticks
}
