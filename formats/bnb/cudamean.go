package bnb

import "math"

// This file reproduces, bit for bit, the float32 mean that PyTorch computes
// on an NVIDIA GPU for a 1-D contiguous float32 tensor (torch 2.11, CUDA,
// H100 with 132 SMs). bitsandbytes' double quantization stores that mean as
// "nested_offset", so a converter that wants byte-identical checkpoints has to
// add the absmax values in the same order as the GPU.
//
// Order of the GPU reduction (ATen's generic reduce kernel, Reduce.cuh, with
// MeanOps: combine = a+b, project = a*factor, factor = float32(1)/float32(n)):
//
//   - One output, so the block is one row of W threads, W a power of two:
//     W = lastPow2(n) for n <= 128 (scalar loads), otherwise
//     W = min(lastPow2(n/4), 512) and every thread loads 4-element vectors.
//   - When a thread would get at least 256 values (ceil(n/W) >= 256) the
//     input is also split over C blocks, C = max(min(target, ceil(v/16)),
//     ceil(v/256)) with v = ceil(n/W) and target = SMs * (2048/W) = 528.
//   - Thread t of block c starts at vector t + c*W and strides by W*C
//     vectors, keeping four running sums (one per vector lane); the n%4 tail
//     elements go to lane sum 0 of threads 0..n%4-1 of block 0; the four sums
//     are then folded left to right.
//   - Inside a block: shared-memory halving while more than 32 threads remain
//     (t += t+W/2, ..., t += t+32), then a warp shuffle-down with offsets
//     16, 8, 4, 2, 1 (from min(W,32)/2 down; lane t += lane t+offset), so
//     lane 0 holds the block total. (Older PyTorch releases shuffled with
//     offsets 1, 2, 4, ...; torch 2.11 on the H100 matches the descending
//     order in every recorded case.)
//   - Across blocks: the last block to finish lets thread t sum the partial
//     results of blocks t, t+W, ... in order, then repeats the in-block tree.
//   - Finally mean = float32(sum * factor).
//
// Assumptions, all true for bitsandbytes' absmax: the tensor starts on a
// 16-byte boundary (fresh allocation, no storage offset) and n < 2^29 (one
// kernel launch with 32-bit indexing).

// Launch parameters of the reduce kernel. The device enters only through the
// block cap target = SMs * (2048/512) = 528 on an H100 (SXM/HBM3) or H200,
// which matters for n > 16*512*target = 4,325,376 (3.5M on an A100 with 108
// SMs); below that the order is the same on every GPU with 32-thread warps.
const (
	cudaNumSMs             = 132
	cudaMaxThreadsPerSM    = 2048
	cudaMaxReduceThreads   = 512 // mnt_wrapper<float>::MAX_NUM_THREADS
	cudaWarpSize           = 32
	cudaInputVecSize       = 4 // float32 elements per vectorized load (and vt0)
	cudaMinValuesPerThread = 16
	cudaMaxValuesPerThread = 256
)

// CUDAMean returns the float32 mean of x bit for bit as torch 2.11
// computes it on an H100 GPU (x.mean() for a 1-D contiguous float32 CUDA
// tensor): the order of additions of ATen's reduce kernel, then the sum
// times float32(1/n). bitsandbytes stores that mean of a tensor's absmax
// values as nested_offset. Other GPUs agree for len(x) up to 4,325,376 (see
// the comment at the top of cudamean.go). The mean of an empty slice is
// NaN, as in torch.
//
// CUDAMean allocates a few KiB of scratch and is safe for concurrent use.
func CUDAMean(x []float32) float32 { return cudaMeanF32(x) }

// cudaMeanF32 returns the float32 mean of x as torch computes it on CUDA
// (x.mean() for a 1-D contiguous float32 tensor on an H100 GPU), bit for bit.
// The mean of an empty slice is NaN, as in torch.
func cudaMeanF32(x []float32) float32 {
	n := len(x)
	if n == 0 {
		return float32(math.NaN())
	}
	factor := float32(1) / float32(n)
	return cudaSumF32(x) * factor
}

// cudaSumF32 returns the float32 sum of x accumulated in the order of
// PyTorch's CUDA reduce kernel for a single output (see the file comment).
// len(x) must be positive.
func cudaSumF32(x []float32) float32 {
	n := len(x)
	vectorize := n > 128
	dim0 := n
	if vectorize {
		dim0 = n / cudaInputVecSize
	}
	width := cudaMaxReduceThreads
	if dim0 < cudaMaxReduceThreads {
		width = lastPow2(dim0)
	}

	// Input split across the threads of the block, then, when each thread
	// would get at least 256 values, across blocks (the block is one row, so
	// the split across warps that precedes it is a no-op).
	step := width
	ctas := 1
	perThread := ceilDiv(n, step)
	if perThread >= cudaMaxValuesPerThread {
		target := cudaNumSMs * (cudaMaxThreadsPerSM / width)
		c := min(target, ceilDiv(perThread, cudaMinValuesPerThread))
		ctas = max(c, ceilDiv(perThread, cudaMaxValuesPerThread))
		step = width * ctas
	}

	lanes := make([]float32, width)
	partial := make([]float32, ctas)
	for c := range ctas {
		for t := range width {
			start := t + c*width
			if vectorize {
				lanes[t] = vectorThreadSum(x, start, step, c == 0 && t < n%cudaInputVecSize)
			} else {
				lanes[t] = scalarThreadSum(x, start, step)
			}
		}
		partial[c] = blockTreeSum(lanes)
	}
	if ctas == 1 {
		return partial[0]
	}
	// Global reduction in the last block: thread t folds partials t, t+W, ...
	for t := range width {
		var acc float32
		for c := t; c < ctas; c += width {
			acc += partial[c]
		}
		lanes[t] = acc
	}
	return blockTreeSum(lanes)
}

// vectorThreadSum is one thread's share with 4-element vector loads: vector
// indices start, start+step, ... (in units of 4 elements), one running sum
// per vector lane, plus the tail element len(x)-len(x)%4+threadIdx when tail
// is set (threadIdx = start for block 0).
func vectorThreadSum(x []float32, start, step int, tail bool) float32 {
	n := len(x)
	var acc [cudaInputVecSize]float32
	for idx := start; idx*cudaInputVecSize+cudaInputVecSize-1 < n; idx += step {
		v := x[idx*cudaInputVecSize : idx*cudaInputVecSize+cudaInputVecSize]
		acc[0] += v[0]
		acc[1] += v[1]
		acc[2] += v[2]
		acc[3] += v[3]
	}
	if tail {
		acc[0] += x[n-n%cudaInputVecSize+start]
	}
	return ((acc[0] + acc[1]) + acc[2]) + acc[3]
}

// scalarThreadSum is one thread's share with scalar loads, unrolled by four:
// elements start, start+step, ... go round-robin into four running sums.
func scalarThreadSum(x []float32, start, step int) float32 {
	var acc [cudaInputVecSize]float32
	i := 0
	for idx := start; idx < len(x); idx += step {
		acc[i] += x[idx]
		i = (i + 1) % cudaInputVecSize
	}
	return ((acc[0] + acc[1]) + acc[2]) + acc[3]
}

// blockTreeSum folds the per-thread values of one block (len(v) a power of
// two) into thread 0 the way block_x_reduce does. It overwrites v.
func blockTreeSum(v []float32) float32 {
	w := len(v)
	for off := w / 2; off >= cudaWarpSize; off /= 2 {
		for t := range off {
			v[t] += v[t+off]
		}
	}
	for off := min(w, cudaWarpSize) / 2; off >= 1; off /= 2 {
		for t := range off {
			v[t] += v[t+off]
		}
	}
	return v[0]
}

// lastPow2 returns the largest power of two not above n (1 for n < 2).
func lastPow2(n int) int {
	p := 1
	for p*2 <= n {
		p *= 2
	}
	return p
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
