"""Cross-Modal Hierarchical Clustering (GRAM §3.2): a BERTopic-style pipeline of pluggable steps.

noise filter -> Sentence-BERT -> UMAP -> HDBSCAN (BERTopic) -> eq.-3 topic words -> k-means domains.
"""

from .ctfidf import (
    VocabRule,
    bertopic_topic_words,
    c_tf_idf,
    c_tf_idf_with_counts,
    eq3_score,
    eq3_topic_words,
    topic_words,
)
from .domains import DomainConfig, cluster_domains, domains_for_size
from .encoders import embed_captions, load_sentence_encoder
from .metrics import (
    concept_coverage,
    domain_purity_chance,
    domain_style_purity,
    majority_concepts,
    topic_nmi,
    topic_word_accuracy,
)
from .noise_filter import FilterConfig, filter_pairs, filter_report, pair_scores
from .pipeline import CHCConfig, CHCResult, run_chc
from .topics import SampledReducer, TopicConfig, TopicFit, fit_topics, reduce_2d

__all__ = [
    "VocabRule", "c_tf_idf", "c_tf_idf_with_counts", "topic_words", "eq3_topic_words", "eq3_score",
    "bertopic_topic_words", "DomainConfig", "cluster_domains", "domains_for_size",
    "load_sentence_encoder", "embed_captions", "topic_nmi", "majority_concepts", "concept_coverage",
    "topic_word_accuracy", "domain_style_purity", "domain_purity_chance", "FilterConfig",
    "pair_scores", "filter_pairs", "filter_report", "CHCConfig", "CHCResult", "run_chc",
    "TopicConfig", "TopicFit", "SampledReducer", "fit_topics", "reduce_2d",
]
