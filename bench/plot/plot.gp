# Draws the BENCHMARKS.md plots from the .dat files that collect.py writes.
#   gnuplot -e "dir='bench/plot'" bench/plot/plot.gp
# Points are medians of the runs; error bars span min..max.
if (!exists("dir")) dir = "."
if (!exists("simlines")) simlines = 5000
if (!exists("simlat")) simlat = 200

set terminal pngcairo size 1200,480 font "DejaVu Sans,10" noenhanced
set grid
set key top right
set style data yerrorlines
set pointsize 1.2

# ---- throughput against workers: echo workers (broker's own cost) and
# ---- llmq-workers in front of a slow simulated provider
set output dir."/throughput-workers.png"
set multiplot layout 1,2
set title "Broker with echo workers (1 KB, 1 client, window 512)"
set xlabel "echo workers"
set ylabel "requests/s"
set xtics (1, 2, 4, 8)
set logscale x 2
set xrange [0.8:10]
set yrange [0:*]
plot dir."/workers-echo.dat" using 1:2:3:4 title "llmq-broker" lw 2 pt 7, \
     ""                      using 1:5:6:7 title "raw zmq_proxy (no queue, no credit)" lw 2 pt 5
if (!exists("simwaves")) simwaves = 0
if (simwaves > 0) set title sprintf("llmq run: %d x 256 x workers prompts, llmq-sim at %d ms, capacity 256/worker", simwaves, simlat); \
else set title sprintf("llmq run: %d prompts, llmq-sim at %d ms, capacity 256/worker", simlines, simlat)
set xlabel "llmq-workers"
plot dir."/workers-sim.dat" using 1:2:3:4 title "llmq run (broker + workers)" lw 2 pt 7, \
     ""                     using 1:5 with lines dt 2 lw 1 title sprintf("ceiling: workers x 256 / %g s", simlat / 1000.0)
unset multiplot

# ---- latency against offered load
set terminal pngcairo size 800,520 font "DejaVu Sans,10" noenhanced
set output dir."/latency-load.png"
set title "Latency against offered load (open loop, 2 echo workers, 1 KB)"
set xlabel "offered load, requests/s"
set ylabel "latency, ms (log)"
set logscale xy
set xtics auto
set xrange [700:30000]
set yrange [*:*]
set key top left
plot dir."/latency-load.dat" using 1:2:3:4 title "llmq-broker p50" lw 2 pt 7 lc 1, \
     ""                      using 1:5:6:7 title "llmq-broker p99" lw 2 pt 7 dt 2 lc 1, \
     ""                      using 1:8:9:10 title "raw zmq_proxy p50" lw 2 pt 5 lc 2, \
     ""                      using 1:11:12:13 title "raw zmq_proxy p99" lw 2 pt 5 dt 2 lc 2

# ---- end to end: wall time and CPU per client (if e2e.dat exists)
if (system("test -f ".dir."/e2e.dat && echo 1") eq "1") {
  set terminal pngcairo size 1000,460 font "DejaVu Sans,10" noenhanced
  set output dir."/e2e.png"
  unset logscale
  set xtics auto
  set autoscale x
  set multiplot layout 1,2 title "End to end: 10,000 prompts, llmq-sim at 200 ms, 1,024 in flight"
  set style data histograms
  set style histogram errorbars gap 1 lw 1
  set style fill solid 0.6 border -1
  set key off
  set yrange [0:*]
  set xtics rotate by -20
  set title "wall time, s (lower is better)"
  set ylabel "s"
  unset xlabel
  plot dir."/e2e.dat" using 2:3:4:xtic(1) lc 1
  set title "CPU, s: client + broker + workers (sim apart)"
  plot dir."/e2e.dat" using 5:6:7:xtic(1) lc 2
  unset multiplot
}
unset output
