from hybrids.metrics.anomaly import auroc
from hybrids.metrics.compression import png_bits_per_dim, webp_bits_per_dim
from hybrids.metrics.denoising import mse, psnr
from hybrids.metrics.fid import (
    DomainClassifier,
    InceptionFeatures,
    classifier_predict,
    dataset_stats,
    frechet_distance,
    frechet_distance_to_dataset,
    gaussian_stats,
    load_inception,
    train_domain_classifier,
)
