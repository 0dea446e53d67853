/* See dpdk_shim.h. Each function is one DPDK inline or macro. */
#include "dpdk_shim.h"

int ferrite_dpdk_errno(void) { return rte_errno; }

uint16_t ferrite_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t ferrite_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *ferrite_dpdk_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

void ferrite_dpdk_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void *ferrite_dpdk_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

void *ferrite_dpdk_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

uint16_t ferrite_dpdk_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

uint16_t ferrite_dpdk_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t ferrite_dpdk_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t ferrite_dpdk_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

struct rte_mbuf *ferrite_dpdk_pktmbuf_next(const struct rte_mbuf *m) { return m->next; }

int ferrite_dpdk_pktmbuf_chain(struct rte_mbuf *head, struct rte_mbuf *tail) { return rte_pktmbuf_chain(head, tail); }

uint16_t ferrite_dpdk_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }

uint16_t ferrite_dpdk_mbuf_refcnt_update_chain(struct rte_mbuf *m, int16_t v)
{
    uint16_t first = rte_mbuf_refcnt_update(m, v);
    for (struct rte_mbuf *s = m->next; s != NULL; s = s->next)
        rte_mbuf_refcnt_update(s, v);
    return first;
}

uint64_t ferrite_dpdk_tx_offload_multi_segs(void) { return RTE_ETH_TX_OFFLOAD_MULTI_SEGS; }
