// pool.h: the engine's thread pool. Each op is one parallel loop over chunks: the calling thread publishes it,
// runs chunks itself, and returns when all chunks are done. Worker threads join an op if they are awake and
// there is still a free slot; a worker the OS has descheduled simply does not join, and nothing waits for it.
// (A fork-join region, e.g. OpenMP's, ends with a barrier that waits for every thread of the team: on a busy
// machine one descheduled thread then stalls the whole call for a scheduler time slice.)
//
// The chunking rule every op uses (chunk_count, chunk_begin) is defined here, once.
//
// One op runs at a time per process (ops of concurrent callers interleave); workers are created on demand and
// live until the process ends.
#pragma once
#include <cstddef>
#include <utility>

namespace bortengine {

// A borrowed reference to a callable void(int chunk): no allocation per op.
class ChunkFn {
  public:
    template <class F>
    ChunkFn(F& f) : obj_(&f), call_([](void* o, int c) { (*static_cast<F*>(o))(c); }) {}  // NOLINT: implicit
    void operator()(int c) const { call_(obj_, c); }

  private:
    void* obj_;
    void (*call_)(void*, int);
};

// Runs fn(c) for every c in [0, n) on the calling thread and up to `helpers` pool workers; returns when all are
// done. Thread-safe. helpers <= 0 or n <= 1 runs inline.
void parallel_for(int n, int helpers, ChunkFn fn);

// The slot of the calling thread within the op it is running: 0 for the caller, 1..helpers for workers that
// joined (distinct within one op), for per-thread scratch buffers.
int current_slot();

// The one chunking rule of every op: `items` (rows, row blocks, panels, sequences) are cut into twice as many
// chunks as threads, so a late thread's share can be taken over in halves, and never more chunks than items.
inline int chunk_count(int threads, int items) {
    const int c = 2 * threads < items ? 2 * threads : items;
    return c > 1 ? c : 1;
}
// Chunk c of `chunks` nearly equal chunks of [0, total) is [chunk_begin(c), chunk_begin(c + 1)).
inline int chunk_begin(int total, int chunks, int c) {
    return static_cast<int>(static_cast<long long>(total) * c / chunks);
}

}  // namespace bortengine
